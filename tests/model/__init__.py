"""Model-based tests: I1-I8 checked over the engine on memory adapters and a simulated clock."""
