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

## run: start the whole product (PostgreSQL+pgvector, SeaweedFS S3, Airflow running the
##      artclf_ingest DAG) on 127.0.0.1 and print the URLs, logins and next steps
run: $(STAMP)
	$(BIN)/artclf up

## stop: stop every server `make run` started (data stays in .artclf/)
stop:
	@test -x $(BIN)/artclf && $(BIN)/artclf down || true

## test: the whole test suite (starts and stops its own servers)
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check artclf_core dags plugins tests bench

clean: stop
	rm -rf .artclf
