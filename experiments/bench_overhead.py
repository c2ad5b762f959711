"""`python -m experiments.bench_overhead`: SGG's fixed costs against Adam.

Host dispatch by depth and the compile time of the whole train step. The
code is experiments/bench/overhead.py.
"""

from experiments.bench.overhead import main

if __name__ == '__main__':
  main()
