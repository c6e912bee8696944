"""The EditMGT Gradio demo: model zoo, on-demand model manager, page and API endpoints.

Nothing here imports torch or CUDA at package import; `editmgt_app.gpu` must stay
importable first (it imports `spaces` on ZeroGPU)."""
