"""What the worker's warm process (fedvla.orchestration.warm) imports: all a federation process
would import.

Imported for its side effect, once, in the fork server. The engine's own modules, then what
lerobot, transformers and datasets import only when a policy is built or a dataset opened
(found by listing the modules a tiny federation imported after these). A module that fails to
import here is only logged: the federation that needs it imports it, and reports the error.
"""

import importlib
import logging

ENGINE_MODULES = [
    "fedvla.orchestration.main",
    "fedvla.orchestration.run_child",
    "fedvla.engine.federation.runner",
    "fedvla.engine.federation.server_app",
    "fedvla.engine.federation.client_app",
    "fedvla.engine.federation.forked_clients",
    "fedvla.orchestration.deployment.federation",
    "flwr.simulation",
    "flwr.server.superlink.fleet.vce.backend.raybackend",
    "lerobot.policies.smolvla.modeling_smolvla",
    "transformers.models.llama.modeling_llama",
    "transformers.models.smolvlm.processing_smolvlm",
    "transformers.models.smolvlm.image_processing_pil_smolvlm",
    "transformers.models.smolvlm.video_processing_smolvlm",
    "num2words",
    "datasets.io.parquet",
    "torchcodec.decoders",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
]

for _name in ENGINE_MODULES:
    try:
        importlib.import_module(_name)
    except Exception as error:
        logging.getLogger(__name__).warning("warm process: %s not imported: %s", _name, error)
