# make, make install, make deb: see README's "Install". The real work is in
# hack/install.sh and hack/deb.sh.
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all install deb clean
all:
	CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o uzram .

install:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' hack/install.sh

deb:
	hack/deb.sh

clean:
	rm -f uzram uzram_*.deb
