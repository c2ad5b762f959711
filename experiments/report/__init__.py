"""The paper's claims against our committed runs: `experiments.claims`.

`evidence` loads the runs and pairs them by seed, `verdicts` holds one
function per claim, and `claims` renders the tables (the command).
"""
