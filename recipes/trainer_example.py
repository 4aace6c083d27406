"""A plain transformers ``Trainer`` script, with ``Trainer`` changed to ``tl_hub.TransferTrainer`` and
``TrainingArguments`` to ``tl_hub.TransferArguments``: the new head trains first on the frozen encoder, then the
encoder is unfrozen at a tenth of the learning rate (``backbone_lr_ratio=0.1``).

    python recipes/trainer_example.py --output-dir out/trainer                     # the shipped letter ResNet
    python recipes/trainer_example.py --model google/vit-base-patch16-224-in21k --output-dir out/vit
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 recipes/trainer_example.py \\
        --output-dir out/trainer-2                                                  # 2 processes (gloo on CPU)

Offline data: scikit-learn's handwritten digits (``--per-class`` training images per digit, 20 for validation).
The global batch (``--batch-size``) is split across processes, so 1 and N processes train on the same batches.
Prints one JSON line with the world size and the final metrics.
"""

import argparse
import json
import sys

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, set_seed

import tl_hub
from tl_hub.demo import base_model_path
from tl_hub.demo_data import digits_dataset


class Images(torch.utils.data.Dataset):
    """Images preprocessed by the model's own processor, and their labels."""

    def __init__(self, ds, processor):
        self.pixels = processor([im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
        self.labels = torch.tensor(ds["label"])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def compute_metrics(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=base_model_path())
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--head-epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch, split across the processes")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train, used = digits_dataset(per_class=args.per_class, seed=args.seed)
    validation, _ = digits_dataset(per_class=20, seed=args.seed + 1, exclude=used)
    labels = train.features["label"].names
    processor = AutoImageProcessor.from_pretrained(args.model)
    set_seed(args.seed)  # the new head's initialisation
    model = AutoModelForImageClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True)

    training_args = tl_hub.TransferArguments(            # was: TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=args.lr,
        # one global batch, split across the processes: 1 and N processes train on the same batches
        per_device_train_batch_size=args.batch_size, accelerator_config={"split_batches": True},
        dataloader_drop_last=True,  # a last, smaller batch would be padded to a full one across processes
        per_device_eval_batch_size=32,
        eval_strategy="epoch", save_strategy="no", logging_strategy="epoch", report_to="none", seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        head_epochs=args.head_epochs, backbone_lr_ratio=0.1,  # the transfer settings
    )
    trainer = tl_hub.TransferTrainer(                    # was: Trainer(
        model=model, args=training_args, train_dataset=Images(train, processor),
        eval_dataset=Images(validation, processor), compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(args.output_dir)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print(json.dumps({"world_size": trainer.args.world_size, "train_losses": losses,
                          "eval_loss": metrics["eval_loss"], "eval_accuracy": metrics["eval_accuracy"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
