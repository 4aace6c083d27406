"""The names of the files in a model folder (written by `tl_hub.model_folder`), in one place."""

INFO_FILE = "tl_hub.json"  # the training record: recipe, base model, settings, labels, what was trained
METRICS_FILE = "metrics.json"  # validation (and test) metrics of the kept epoch
HISTORY_FILE = "history.json"  # one record per epoch
CURVE_FILE = "learning_curve.png"
CONFIG_FILE = "config.json"  # the transformers config, with the labels
PREPROCESSOR_FILE = "preprocessor_config.json"  # the image processor of the base model
CARD_FILE = "README.md"  # the model card (on the Hub)
MODEL_FILE = "model.safetensors"  # full model weights (transformers)
HEAD_FILE = "tl_hub_head.safetensors"  # only the tensors training changed (base model fetched when loading)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # a PEFT adapter
CONFUSION_FILE = "confusion_matrix.png"  # the validation confusion matrix of the kept epoch
PER_LABEL_FILE = "per_label.png"  # a multi-label model's average precision, F1 and threshold per label
ERRORS_FILE = "errors.png"  # the most confidently misclassified validation images
RELIABILITY_FILE = "reliability.png"  # reliability diagram with and without the temperature (test, else validation)
ONNX_FILE = "model.onnx"  # an exported classifier (tl_hub.export), run by ONNX Runtime
PARITY_FILE = "parity.json"  # the export's parity check against PyTorch (and int8's agreement and accuracy change)
ONNX_FOLDER = "onnx"  # where a pushed repository keeps its ONNX export, when it has one
