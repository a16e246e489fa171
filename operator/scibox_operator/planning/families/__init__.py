"""Parameter counting, one module per model family; `registry` maps a config to its family.

Parameters are counted the way transformers builds the model (validated in the tests
against its model classes instantiated on the meta device) and filed by tensor-parallel
placement as `facts.LayerParams` describes.
"""
