# rekey: `make demo` and `make test` set everything up on a fresh Debian machine.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 1

.PHONY: all deps build demo test vet fuzz bench clean

all: build

# System packages the HSM tests and the demo need (SoftHSM2 and its tools).
deps:
	@if [ ! -f /usr/lib/softhsm/libsofthsm2.so ] || ! command -v softhsm2-util >/dev/null; then \
	  echo "installing softhsm2 (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq softhsm2 >/dev/null; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go is required (https://go.dev/dl/)"; exit 1; }

build:
	$(GO) build -o bin/rekey ./jobs/rekey
	$(GO) build -o bin/softhsm-setup ./jobs/softhsm-setup

demo: deps build
	./jobs/examples/demo.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test: deps vet
	$(GO) test -count=1 -timeout 30m ./...

# Short runs of every fuzz target (go test -fuzz takes one target at a time).
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzParseEnvelope$$' -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzDEKRow$$' -fuzztime $(FUZZTIME)
	$(GO) test ./hsmio -run '^$$' -fuzz '^FuzzParseURI$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pipeline -run '^$$' -fuzz '^FuzzParseJob$$' -fuzztime $(FUZZTIME)

clean:
	rm -rf bin demo
