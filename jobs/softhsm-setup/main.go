// Command softhsm-setup creates the SoftHSM2 tokens and KEKs of the demo and
// the example jobs in a local folder: tokens "source" and "target", each
// with an AES-256 KEK "kek-aes" and an RSA-2048 KEK pair "kek-rsa", all
// non-extractable. It is development tooling: production KEKs are made by
// an HSM's security officers.
//
//	softhsm-setup -dir demo/softhsm
//
// PINs come from $REKEY_SOURCE_PIN and $REKEY_TARGET_PIN (SO PINs from
// $REKEY_SO_PIN); it prints the SOFTHSM2_CONF line to export. Running it
// again keeps existing tokens and keys.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"rekey/hsmio/softhsm"
)

func main() {
	dir := flag.String("dir", "demo/softhsm", "folder for the token store and softhsm2.conf")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "softhsm-setup:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	conf, err := softhsm.Setup(abs)
	if err != nil {
		return err
	}
	so := env("REKEY_SO_PIN", "so-demo-0000")
	pins := map[string]string{"source": os.Getenv("REKEY_SOURCE_PIN"), "target": os.Getenv("REKEY_TARGET_PIN")}
	for _, tok := range []string{"source", "target"} {
		if pins[tok] == "" {
			return fmt.Errorf("set REKEY_%s_PIN (the user PIN of token %q)", map[string]string{"source": "SOURCE", "target": "TARGET"}[tok], tok)
		}
		if err := softhsm.InitToken(conf, tok, so, pins[tok]); err != nil {
			return err
		}
	}
	for _, tok := range []string{"source", "target"} {
		for _, spec := range []softhsm.KeySpec{{Label: "kek-aes"}, {Label: "kek-rsa", RSA: true}} {
			if err := softhsm.CreateKey(tok, pins[tok], spec); err != nil {
				if strings.Contains(err.Error(), "PIN_INCORRECT") {
					return fmt.Errorf("%v: token %q in %s was made with another PIN; set REKEY_%s_PIN to it, or delete %s to start over", err, tok, abs, strings.ToUpper(tok), abs)
				}
				return err
			}
		}
	}
	fmt.Printf("export SOFTHSM2_CONF=%s\n", conf)
	return nil
}
