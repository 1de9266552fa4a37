"""Field protocols: one driver package per protocol behind one interface.

`driver.py` is the interface every driver offers the composition root, `registry.py` lists the
drivers, `schedule.py` is the fixed-rate schedule any polled protocol reuses. Each protocol's
package holds its config models, its sans-IO codec and the transports that own its IO.
"""
