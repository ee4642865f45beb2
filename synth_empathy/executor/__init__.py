"""The executor: runs a stage of the method over Ray Data and keeps its bookkeeping
(contracts checked, finished parts kept, markers, progress lines). It sits above the
stages, as a datatrove executor sits above its steps; the run store is below both."""
