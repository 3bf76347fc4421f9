"""A compressed model with every block certified: `python train.py blocks=all compress=mlp75`.

Modules, in the order the recipe uses them (docs/compression.md):
  recipe      what conf/compress/*.yaml builds: budget, allocation, pruning, calibration, e2e
  budget      fractions of heads / MLP neurons / rank / parameters -> the flat cut per block
  allocation  the global neuron budget spread over blocks (flat, sensitivity, FLAP-standardised)
  walk        the streamed calibration walk: teacher and stitched residual streams, per-block
              normal equations, each block cut as soon as its statistics exist
  lstsq       streamed normal equations, least squares, structured OBS (ZipLM / SlimGPT)
  scores      importance, Wanda-sp, FLAP fluctuation
  cut         heads / neurons cut from a block IR and the output projection compensated
  pipeline    the stages (widths, walk, e2e, certify, evaluate), resumable from the run dir
  summary     the stitched model's figures on the held-out prompts and the stress set
  front       the whole-model Pareto points for python -m blockcert.pareto
"""
