.PHONY: setup demo test peers
setup:
	scripts/setup
demo:
	scripts/demo
test:
	scripts/test
peers:
	scripts/setup-peers
