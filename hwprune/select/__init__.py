"""Width selection under constraints: the problem, the evaluator, and the greedy, knapsack and QCQP selectors."""
