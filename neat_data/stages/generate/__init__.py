"""The generate stage: plan the requests, call the engine, record the pass; --redo and the budget."""
