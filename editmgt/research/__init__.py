"""Research code: experiments that train and measure models, kept apart from the library.

Its modules build on the library (`editmgt.models`, `editmgt.train`, the pipeline); the
library does not import them.
"""
