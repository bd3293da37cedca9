"""Developer tools, apart from the user commands: ``fusionbench bench check|refresh`` (:mod:`.bench`, the speed
regression check against the machine class's baseline in tests/benchmarks/) and ``fusionbench bench profile``
(:mod:`.profile`, where a training step's time goes). The CLI registers their commands; no other harness
module imports them."""
