"""The peers: the notebook's models in other frameworks (benchmarks/sitting.py).

`run.py` times one (framework, model) in the peers' environment
(requirements.txt); `torch_models` and `keras_models` build the networks,
`common` holds the shapes, the FLOP count and the timing loop.
"""
