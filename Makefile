# Sigil — build, run and test. `make run` starts the all-in-one daemon;
# `make test` runs the whole suite (unit + integration with the real binaries).
GO ?= go
BIN := $(CURDIR)/bin
DATA_DIR ?= $(CURDIR)/sigil-data
TEST_FLAGS ?= -count=1 -timeout 15m

.PHONY: all build run test test-deps test-unit test-integration vet lint generate bench fmt clean

all: build

build:
	$(GO) build -o $(BIN)/ ./tools/sigild ./tools/sigilctl ./tools/sigil

run: build
	$(BIN)/sigild start --data-dir $(DATA_DIR)

vet:
	$(GO) vet ./... ./api/...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '/gen/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Real servers the integration tests start (PostgreSQL, ...): installed as
# root, otherwise named and fatal. See scripts/test-deps.sh.
test-deps:
	./scripts/test-deps.sh

test: test-deps vet build
	SIGIL_BIN_DIR=$(BIN) $(GO) test $(TEST_FLAGS) ./... ./api/...

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... ./api/...

generate:
	cd api && PATH="$$PATH:$$($(GO) env GOPATH)/bin" buf generate

bench:
	$(GO) test -run '^$$' -bench . -benchmem -cpu 2 ./identity/ca/ ./services/storage/badger/

# PostgreSQL gateway against a direct connection with the real pgbench
# (about 3 minutes; the Markdown report also goes to bench/results/).
# Extra flags: make bench-pg BENCH_PG_FLAGS="-rounds 2". See bench/README.md.
.PHONY: bench-pg
bench-pg: test-deps build
	SIGIL_BIN_DIR=$(BIN) $(GO) run ./bench/pgbench $(BENCH_PG_FLAGS)

# MySQL gateway against a direct MariaDB connection with a Go load driver
# (about 3 minutes; the Markdown report also goes to bench/results/).
# Extra flags: make bench-mysql BENCH_MYSQL_FLAGS="-rounds 2". See bench/README.md.
.PHONY: bench-mysql
bench-mysql: test-deps build
	SIGIL_BIN_DIR=$(BIN) $(GO) run ./bench/mysqlbench $(BENCH_MYSQL_FLAGS)

# SSH gateway against a direct sshd with real OpenSSH: scp of a 1 GiB file
# and session open time (a few minutes; needs root for sshd and its test
# login; the Markdown report also goes to bench/results/).
# Extra flags: make bench-ssh BENCH_SSH_FLAGS="-rounds 2 -size 256". See bench/README.md.
.PHONY: bench-ssh
bench-ssh: test-deps build
	SIGIL_BIN_DIR=$(BIN) $(GO) run ./bench/sshbench $(BENCH_SSH_FLAGS)

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '/gen/')

clean:
	rm -rf $(BIN)
