"""A site's cameras renamed to the experiment's: node config ``camera-map``.

``camera-map="observation.images.wrist=observation.images.cam2,..."`` (site key = experiment
key, comma separated): the ClientApp's dataset then reports and yields its frames under the
experiment's keys, without rewriting the dataset. The startup kit writes the map the
compatibility report found.
"""

from fedvla.engine.data.features import DatasetError

NODE_CONFIG_KEY = "camera-map"
CAMERA_PREFIX = "observation.images."


def format_camera_map(mapping: dict[str, str]) -> str:
    return ",".join(f"{source}={target}" for source, target in mapping.items())


def parse_camera_map(text: str) -> dict[str, str]:
    """The map; DatasetError naming the bad pair."""
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        source, sep, target = pair.partition("=")
        if not sep or not source.startswith(CAMERA_PREFIX) or not target.startswith(CAMERA_PREFIX):
            raise DatasetError(
                f"camera-map: {pair!r} is not '{CAMERA_PREFIX}<site camera>="
                f"{CAMERA_PREFIX}<experiment camera>'"
            )
        mapping[source] = target
    if len(set(mapping.values())) != len(mapping):
        raise DatasetError(f"camera-map: two cameras map to the same key in {text!r}")
    return mapping
