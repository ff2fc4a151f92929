"""The rank stage: scored rows → ranked lists, pairs and dropped pairs; the lengths rank balances on."""
