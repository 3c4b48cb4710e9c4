"""What a model costs: the job's own prices first, then a maintained catalogue.

The catalogue is ``genai-prices`` (Pydantic's, kept up to date with the providers' price pages
and released often), used offline from the snapshot in its package: batchchat never lets it
fetch updates, so a run's estimate does not change under it. It is consulted only for the
providers it knows (Together, OpenAI) and only for models the job does not price itself, so a
job's ``[prices]`` (or ``--price``) always win, and a local server's model that happens to share a
name with a hosted one is never given the hosted price.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlparse

from .jobparts import Price

# The catalogue's provider for an API host.
CATALOGUE_PROVIDERS = {"api.together.xyz": "together", "api.together.ai": "together", "api.openai.com": "openai"}


def catalogue_provider(base_url: str | None) -> str | None:
    """The catalogue's name for the provider at ``base_url``, if it knows it."""
    host = (urlparse(base_url).hostname or "") if base_url else ""
    return CATALOGUE_PROVIDERS.get(host.lower())


def catalogue_prices(models: Iterable[str], provider: str) -> dict[str, Price]:
    """The catalogue's price of each model it knows at ``provider``, in US dollars per million tokens."""
    from genai_prices import Usage, calc_price  # loaded only when a price is looked up

    million = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    found = {}
    for model in models:
        try:
            price = calc_price(million, model, provider_id=provider)
        except LookupError:
            continue
        found[model] = Price(float(price.input_price), float(price.output_price), source="catalogue")
    return found


def prices_for(models: Iterable[str], own: dict[str, Price], base_url: str | None) -> dict[str, Price]:
    """``own`` prices, completed from the catalogue for the models it lacks."""
    missing = [model for model in models if model not in own]
    provider = catalogue_provider(base_url)
    if not missing or provider is None:
        return dict(own)
    return {**catalogue_prices(missing, provider), **own}
