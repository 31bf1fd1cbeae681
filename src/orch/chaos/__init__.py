"""`orch chaos`: a chaos harness shipped with the product.

It runs real orch processes on a real store, kills and pauses them while they work, and then
checks the invariants I1-I10 of DESIGN.md §4 over the store's history, the forge's log and the
process table. See docs/reliability.md.
"""
