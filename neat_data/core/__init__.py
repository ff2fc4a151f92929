"""Foundation modules every layer may use: the error contract (errors), content keys (keys), table schemas
(schemas), the messages an engine is sent (messages), models and bundled data (models, resources), steering pairs
(pairs), reading prompts (prompts_in), run folders and their typed manifest (runfolder, manifest) and shards."""
