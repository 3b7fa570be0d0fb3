"""Using a trained run outside the toolkit: predict new images (predict.py), fit transformers'
``pipeline``/``from_pretrained`` conventions and export a stand-alone merged folder (export.py),
model cards (card.py) and the Hub upload (hub.py)."""
