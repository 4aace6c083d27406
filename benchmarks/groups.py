"""Print the layer groups tl-hub finds in real-sized architectures (random weights, built from default configs):
what ``unfreeze=k`` trains and how ``layer_decay`` counts depth.

    python benchmarks/groups.py            # ConvNeXt-T and Swin-T (about 20 s on 2 CPU cores)
"""

import sys

from transformers import AutoModelForImageClassification, ConvNextConfig, SwinConfig

from tl_hub import split_model


def describe(name: str, config) -> str:
    model = AutoModelForImageClassification.from_config(config)
    parts = split_model(model)
    total = sum(p.numel() for p in model.parameters())
    rows = [f"{name}: {len(parts.blocks)} blocks, {total / 1e6:.1f}M parameters; head {list(parts.head)}",
            "| group | modules | parameters |", "|---|---|---|"]
    for g in parts.groups:
        n = sum(model.get_parameter(p).numel() for p in g.params)
        modules = ", ".join(f"`{m}`" for m in g.modules)
        rows.append(f"| {g.name} | {modules} | {n / 1e6:.2f}M |")
    top2 = sum(model.get_parameter(p).numel() for g in parts.blocks[-2:] for p in g.params)
    encoder = sum(model.get_parameter(p).numel() for p in parts.encoder_params())
    rows.append(f"\nunfreeze=2 trains the top 2 blocks: {top2 / encoder:.0%} of the encoder's parameters.")
    return "\n".join(rows)


def main() -> int:
    print(describe("ConvNeXt-T (depths 3-3-9-3)", ConvNextConfig(num_labels=10)))
    print()
    print(describe("Swin-T (depths 2-2-6-2)", SwinConfig(num_labels=10)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
