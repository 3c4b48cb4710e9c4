"""How fast requests go: the throttle, its judges of 429s, 503s and crowded servers, and retries."""
