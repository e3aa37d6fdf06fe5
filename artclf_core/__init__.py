"""artclf core: a plain library (no Airflow import) that turns images dropped into an S3
bucket into classified, embedded, de-duplicated rows in PostgreSQL + pgvector."""

__version__ = "0.1.0"

#: The media the product recognises, in the order of the model's softmax outputs.
CLASSES: tuple[str, ...] = ("drawings", "engraving", "iconography", "painting", "sculpture")
#: Side of the square model input, in pixels (the prototype's 150x150x3).
IMAGE_SIZE = 150
#: Dimension of the embedding (the prototype's linear penultimate layer).
EMBEDDING_DIM = 128
