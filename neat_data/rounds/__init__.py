"""Online rounds from a recipe: the schema and its checks (recipe, recipe_file), the stage table (stages), the
held-out split (split), running the rounds (runner), variants that share identical stages (variants, comparison),
and publishing finished rounds (publish)."""
