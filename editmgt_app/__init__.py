"""The EditMGT Gradio demo: on-demand model manager (over the library's zoo, `editmgt.zoo`), page
and API endpoints.

Nothing here imports torch or CUDA at package import; `editmgt_app.gpu` must stay
importable first (it imports `spaces` on ZeroGPU)."""
