"""The paper's claims against our committed runs: `experiments.claims`.

`evidence` loads the runs and pairs them by seed, `verdicts` holds one
function per claim (with `table_claims` for the C4 table's folder,
`robustness_claim` for the robustness grids, and `rows` for the row and
the words of its verdict), and `claims` renders the tables (the command).
"""
