"""Every test runs on 4 fake CPU devices, set before JAX initialises (STYLE.md, habit 15)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "4"
