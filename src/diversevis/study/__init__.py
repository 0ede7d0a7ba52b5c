"""Many units and their outputs: layer sweeps, the results store, network comparison, the HTML report
and the reproduction study."""
