"""Does the pruned model still work? Task accuracy (`tasks`), HumanEval (`humaneval`) and the sandbox its programs run in."""
