# artclf: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run stop test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

## install: create .venv with artclf and everything it needs
install: $(STAMP)

## run: start the embedded stack (PostgreSQL+pgvector, SeaweedFS S3) and show how to use it
run: $(STAMP)
	$(BIN)/artclf stack up
	@echo
	@echo "Next:"
	@echo "  source .venv/bin/activate && eval \"\$$(artclf stack env)\""
	@echo "  artclf drop path/to/images/        # upload to s3://\$$ARTCLF_BUCKET/incoming/"
	@echo "  artclf ingest                      # validate, de-duplicate, classify, embed, catalogue"
	@echo "  artclf similar 1                   # top-5 similar artworks (SQL: artclf.similar_artworks)"
	@echo "  make stop                          # stop everything"

## stop: stop every server `make run` started
stop:
	@test -x $(BIN)/artclf && $(BIN)/artclf stack down || true

## test: the whole test suite (starts and stops its own servers)
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check artclf_core tests bench

clean: stop
	rm -rf .artclf
