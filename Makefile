.PHONY: setup demo test peers models
setup:
	scripts/setup
demo:
	scripts/demo
test:
	scripts/test
peers:
	scripts/setup-peers
models:
	scripts/setup-models
