"""``uqc demo``: the embedded example (``examples/demo.yaml``) end to end.

Run (in process) → reduce → report → maps, with the store and the maps under ``out_dir``
(the YAML's ``store`` is overridden; nothing is copied). The prior is the digits GMM
shipped in ``priors/digits16.npz`` and the sampler PnP-ULA, so the demo exercises a real
Markov chain with the same code path as any campaign.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from uqcampaign.kernels.errors import UQError
from uqcampaign.kernels.threads import torch_threads
from uqcampaign.pipeline.config import Campaign, load_campaign

__all__ = ["DEMO_YAML", "LEARNED_DEMO_YAML", "demo_campaign", "run_demo"]

# The source checkout's examples/ folder (the package is installed editable from it).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_YAML = EXAMPLES / "demo.yaml"
# `uqc demo --learned`: LATINO with the shipped latent-consistency prior on held-out digits.
LEARNED_DEMO_YAML = EXAMPLES / "digits-inpaint-latino.yaml"


def demo_campaign(out_dir: str | Path, yaml_path: str | Path = DEMO_YAML) -> Campaign:
    """The demo campaign with its store moved to ``out_dir/demo.zarr``."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise UQError(f"{yaml_path}: demo campaign not found; `uqc demo` runs from the uqcampaign source checkout (pip install -e .)")
    campaign = load_campaign(yaml_path)
    store = Path(out_dir).expanduser().resolve() / "demo.zarr"
    return campaign.model_copy(update={"store": str(store)}).with_root(campaign.root)


def run_demo(
    out_dir: str | Path = "demo-output", *, console: Console | None = None, progress: bool = True, yaml_path: str | Path = DEMO_YAML
) -> dict[str, object]:
    """Run, reduce, report and map the demo campaign; returns the store, maps and phase seconds.

    ``yaml_path`` swaps in another campaign file (tests use a tiny one).
    """
    from uqcampaign.pipeline.maps import write_maps
    from uqcampaign.pipeline.reduce import reduce_store
    from uqcampaign.pipeline.report import print_report
    from uqcampaign.pipeline.runner import run_campaign
    from uqcampaign.pipeline.units import count_measurements

    console = console or Console()
    out_dir = Path(out_dir).expanduser().resolve()
    campaign = demo_campaign(out_dir, yaml_path)
    store = campaign.store_location
    seconds: dict[str, float] = {}
    console.rule(f"uqc demo: {campaign.name}")
    console.print(
        f"{count_measurements(campaign)} measurements, {campaign.chains} chains x {campaign.draws} draws, "
        f"sampler {campaign.sampler}, prior {campaign.prior}",
        markup=False,
    )

    start = time.perf_counter()
    with torch_threads(1):
        run_campaign(campaign, progress=progress, console=Console(stderr=True))  # the bar goes to stderr
    seconds["run"] = time.perf_counter() - start

    start = time.perf_counter()
    reduce_store(store, level=campaign.reduce.level, progress=progress)
    seconds["reduce"] = time.perf_counter() - start

    start = time.perf_counter()
    print_report(store, console)
    seconds["report"] = time.perf_counter() - start

    start = time.perf_counter()
    maps = write_maps(store, out_dir / "maps")
    seconds["maps"] = time.perf_counter() - start

    timing = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    console.print(f"store: {store}", markup=False)
    console.print(f"maps:  {out_dir / 'maps'} ({len(maps)} PNG files)", markup=False)
    console.print(f"time:  {timing}", markup=False)
    return {"store": store, "maps": maps, "seconds": seconds}
