"""GRIN Studio: `python app.py` serves the web app on localhost (port: $GRADIO_SERVER_PORT, default 7860).

On a Hugging Face Space the same file is the entry point. On a ZeroGPU Space the model work runs in spaces.GPU
calls (grin_ui/gpu.py); `spaces` has to be imported before anything initialises CUDA, hence first here, and the
models are loaded and moved to "cuda" here, at import, in the main thread: ZeroGPU packs the weights for its GPU
workers when the app launches, and a model moved later, in a request thread, would reach real CUDA and fail.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import spaces  # noqa: F401  (only on Hugging Face Spaces)
except ImportError:
    pass

from grin_ui import build_app, launch_kwargs, preload_models  # noqa: E402

preload_models()  # on a Space: the models it serves, on their device now; locally nothing (Load loads)
demo = build_app()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1).launch(
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), **launch_kwargs())
