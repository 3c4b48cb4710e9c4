"""The project's promises about itself: lint clean, README commands real, CLI start-up light."""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_quick_start_is_exactly_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "batchchat run jobs/demo.toml" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci
    if '-m "not slow"' in commands[1]:  # the slowest tests README's command leaves out, CI runs
        assert "pytest -m slow" in ci


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_does_not_import_the_heavy_libraries():
    code = (
        "import sys; from batchchat.cli.commands import main\n"
        "heavy = [m for m in ('pandas', 'pyarrow', 'aiohttp', 'tqdm', 'ray') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --- the shape of the package (ARCHITECTURE.md's code map) --------------------------------------

PACKAGE = ROOT / "batchchat"


def code_map() -> tuple[tuple[str, set[str]], ...]:
    """ARCHITECTURE.md's layers, lowest first, each with the modules its entries name: a module
    imports only from its own layer or below (type-only imports included), and never in a circle."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("\n## Code map\n", 1)[1].split("\n## ", 1)[0]
    layers = []
    for block in section.split("\n### ")[1:]:
        name = block.split(":", 1)[0].strip()
        modules = set()
        for line in block.splitlines():
            if line.startswith("- `"):
                head = line[2:].split(": ", 1)[0]
                for path in re.findall(r"`([\w/]+\.py)`", head):
                    module = path.removesuffix(".py").replace("/", ".")
                    modules.add(module if module == "__init__" else module.removesuffix(".__init__"))
        layers.append((name, modules))
    return tuple(layers)


LAYERS = code_map()
# Each third-party library behind the homes the design gives it, counting imports that run.
LIBRARY_HOMES = {
    "aiohttp": {"client", "simulator"},
    "aiolimiter": {"pacing.throttle"},
    "click": {"cli.commands"},
    "genai_prices": {"job.money"},
    "pyarrow": {"input.source", "output.sink", "core.arrays"},
    "tenacity": {"pacing.retry"},
    "tqdm": {"output.progress"},
    "ray": {"ray"},
    "matplotlib": {"reports.htmlreport"},
    "orjson": {"core.jsonio"},
    "numpy": {"core.compact", "core.arrays"},
}
PACKAGE_HOMES = {"client", "simulator", "ray"}  # packages that are one home each, whichever module imports


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    return name.removesuffix(".__init__") if name != "__init__" else name


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The package modules ``path`` imports (anywhere in it, type-only ones too), and the
    third-party libraries it imports at run time (not under TYPE_CHECKING)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(node) for branch in ast.walk(tree)
                   if isinstance(branch, ast.If) and getattr(branch.test, "id", None) == "TYPE_CHECKING"
                   for node in ast.walk(branch)}  # fmt: skip
    here = module_name(path)
    package = [] if here == "__init__" else here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
    ours: set[str] = set()
    libraries: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                ours.add(".".join([*base, *node.module.split(".")]))
            else:
                ours.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "batchchat":
                    ours.add(name.removeprefix("batchchat").removeprefix(".") or "__init__")
                elif top not in sys.stdlib_module_names and id(node) not in typing_only:
                    libraries.add(top)
    unknown = {m for m in ours if m not in MODULES and m != ""}
    assert not unknown, f"{path} imports {unknown}, which this check cannot find"
    return ours - {here, ""}, libraries


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_architecture_md_puts_every_module_in_one_layer():
    layered = [module for _, modules in LAYERS for module in modules]
    assert len(LAYERS) >= 6 and len(layered) == len(set(layered)), "a module is in two layers"
    missing, gone = MODULES - set(layered), set(layered) - MODULES
    assert not missing and not gone, f"not in ARCHITECTURE.md's code map: {missing}; named there but gone: {gone}"


def test_no_module_imports_one_above_it():
    layer = {module: n for n, (_, modules) in enumerate(LAYERS) for module in modules}
    upward = []
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path)
        for target in imports(path)[0]:
            if layer[target] > layer[source] and source != "__init__":  # the API names every layer
                upward.append(f"{source} ({LAYERS[layer[source]][0]}) imports {target} ({LAYERS[layer[target]][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = {module_name(p): imports(p)[0] - {"__init__"} for p in PACKAGE.rglob("*.py")}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo += graph.get(module, ())
        return False

    circles = sorted(m for m in graph if reaches(m, m))
    assert not circles, f"modules in an import cycle: {circles}"


def test_each_library_is_imported_by_its_one_home():
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for library in imports(path)[1]:
            name = module_name(path)
            found.setdefault(library, set()).add(name.split(".")[0] if name.split(".")[0] in PACKAGE_HOMES else name)
    assert found == LIBRARY_HOMES


def test_the_planning_modules_load_no_http_or_arrow():
    code = (
        "import sys; import batchchat.runs.dryrun, batchchat.plan.plan, batchchat.plan.rows, batchchat.plan.answers, batchchat.job.jobfile\n"
        "print(','.join(m for m in ('aiohttp', 'pyarrow', 'pandas', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(filter(None, result.stdout.strip().split(",")))
    assert "aiohttp" not in loaded  # a dry run sends nothing: no HTTP client
    assert not loaded - {"pyarrow"}  # the reading of the input loads Arrow, nothing else


def test_a_cli_run_writes_its_output_without_loading_pandas(tmp_path, sim):
    """pandas costs every run 0.1-0.2 s of start-up, as much CPU as thousands of requests: only a
    DataFrame given to the library brings it."""
    pq.write_table(pa.table({"prompt": ["one", "two", None]}), tmp_path / "in.parquet")
    code = (
        "import atexit, sys; from batchchat.cli.commands import main\n"
        "atexit.register(lambda: print('pandas' in sys.modules, file=sys.stderr))\n"
        "main()"
    )
    args = ["run", "-i", "in.parquet", "-o", "out.parquet", "-m", "sim-chat", "--base-url", sim.url, "-q"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1] == "False", result.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("status").to_pylist() == ["ok", "ok", "error"]
    assert table.column("prompt_tokens").null_count == 1


def test_mypy_is_clean():
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], capture_output=True, text=True,
                            cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_version_is_the_installed_metadata_and_the_types_ship():
    from importlib.metadata import files, version

    import batchchat

    assert batchchat.__version__ == version("batchchat")
    shipped = [str(f) for f in files("batchchat") or ()]
    assert "batchchat/py.typed" in shipped or any(
        f.endswith(".pth") for f in shipped
    )  # a wheel, or an editable install
    assert (PACKAGE / "py.typed").exists()


# --- ARCHITECTURE.md's names -------------------------------------------------------------------

# Dotted names ARCHITECTURE.md may cite that are not the package's: a library's, or an argument's.
NOT_OURS = ("ray.data.", "pa.", "sys.", "ledger.")


def defined_names() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each module's top-level names (functions, classes, assignments), and each class's own
    names (methods, fields, constants, enum members), from the source: no module is imported, so
    an optional extra missing changes nothing."""
    import ast

    tops: dict[str, set[str]] = {}
    classes: dict[str, set[str]] = {}

    def assigned(node: ast.stmt) -> list[str]:
        if isinstance(node, ast.Assign):
            return [t.id for t in node.targets if isinstance(t, ast.Name)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        return []

    paths = list(PACKAGE.rglob("*.py"))
    for path in paths:
        names = tops.setdefault(module_name(path), set())
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            names.update(assigned(node))
            if isinstance(node, ast.ClassDef):
                members = classes.setdefault(node.name, set())
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        members.add(item.name)
                    members.update(assigned(item))
    # A module in a folder may be named alone (``pipeline.Stages``) where no other module shares
    # its name; a folder and the module of its name (``plan``, ``plan.plan``) are one name.
    modules = [name for name in list(tops) if "." in name]
    shorts = [name.rsplit(".", 1)[-1] for name in modules]
    for name, short in zip(modules, shorts, strict=True):
        if shorts.count(short) == 1:
            tops[short] = tops.get(short, set()) | tops[name]
    return tops, classes


def cited_names(text: str) -> set[str]:
    """The code ARCHITECTURE.md names in backquotes that the check can tell is a name of ours:
    dotted names, ``CamelCase`` and ``CONSTANT`` names, names with an underscore, calls; argument
    lists dropped. Single plain words (``run``, ``ok``) may be a command or a status: left out;
    file names are paths, checked as such."""
    cited = set()
    for quoted in re.findall(r"`([^`\s]+)`", text):
        name = re.sub(r"\(.*\)$", "", quoted.removeprefix("batchchat."))
        dotted = re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name)
        if not dotted or name.endswith(".py") or name.startswith(NOT_OURS):
            continue
        if "." in name or "_" in name.strip("_") or name[0].isupper() or quoted.endswith(")"):
            cited.add(name)
    return cited


def unresolved(name: str, tops: dict[str, set[str]], classes: dict[str, set[str]]) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest module the name starts with
        module = ".".join(parts[:cut])
        if module in tops:
            rest = parts[cut:]
            if not rest:
                return False
            if rest[0] not in tops[module]:
                return True
            return len(rest) > 1 and (len(rest) > 2 or rest[1] not in classes.get(rest[0], set()))
    if len(parts) == 2:  # Class.member
        return parts[1] not in classes.get(parts[0], set())
    if len(parts) > 2:
        return True
    if any(name in names for names in tops.values()) or any(name in members for members in classes.values()):
        return False
    # a value the code writes (an error type, a field of a batch line) is named in it as a string
    written = (f'"{name}"' in path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py"))
    return not (name.islower() and any(written))


def test_architecture_md_names_only_what_exists():
    """Every module, function, class, member and constant the guide names, and every file and
    folder it points to, is in the code: a recipe that names a place that moved sends its reader
    nowhere."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    tops, classes = defined_names()
    cited = cited_names(text)
    assert {"pipeline.Stages", "Setup.plan", "providers.PROVIDERS", "derive_batch"} <= cited  # the check reads the guide
    missing = sorted(name for name in cited if unresolved(name, tops, classes))
    paths = {p for p in re.findall(r"`([\w./-]+(?:\.py|/))`", text)}
    gone = sorted(p for p in paths if not (PACKAGE / p).exists() and not (ROOT / p).exists())
    assert not missing and not gone, f"ARCHITECTURE.md names what the code does not have: {missing + gone}"


def test_the_architecture_check_finds_a_name_that_is_not_there():
    tops, classes = defined_names()
    assert not unresolved("plan.Setup.plan", tops, classes) and not unresolved("KEPT_BYTES", tops, classes)
    for wrong in ("plan.Setup.build", "plan.Nothing", "Setup.nothing", "NO_SUCH_CONSTANT", "pipline.Stages"):
        assert unresolved(wrong, tops, classes), wrong
    assert "pipeline.Stages" in cited_names("see `pipeline.Stages` and `Setup.of(job, x)`; `run`, `ok`")
    assert "run" not in cited_names("see `run`")
