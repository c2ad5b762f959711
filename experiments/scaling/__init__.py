"""SGG at pod scale, simulated: the compiled program read per device.

`programs` (``experiments.train``'s train step and the momentum form's
refresh program, lowered from abstract state on a mesh), `hlo` (the
collectives and conditionals of a compiled program), `measure` (one
program's memory, traffic, FLOPs, roofline and compile time, beside
Adam's), `report` (the comparisons, the targets, the tables) and `cli`
(``python -m experiments.podscale``: one subprocess per program, resumable).
"""
