package alikms_test

import (
	"errors"
	"strings"
	"testing"

	"rekey/providers/keys"
)

func TestParseRef(t *testing.T) {
	for _, c := range []struct {
		in, canonical, custodian string
	}{
		{"alikms:alias/app?region=cn-hangzhou", "alikms:alias/app;region=cn-hangzhou", "alikms|cn-hangzhou"},
		{"alikms:alias/app;region=cn-hangzhou", "alikms:alias/app;region=cn-hangzhou", "alikms|cn-hangzhou"},
		{"alikms:1234abcd-12ab-34cd-56ef-1234567890ab?region=ap-southeast-1&credential-source=file:/etc/ak.json",
			"alikms:1234abcd-12ab-34cd-56ef-1234567890ab;region=ap-southeast-1", "alikms|ap-southeast-1"},
		// Alibaba's own endpoints (VPC, public) reach the same keys.
		{"alikms:k1?region=cn-hangzhou&endpoint=kms-vpc.cn-hangzhou.aliyuncs.com", "alikms:k1;region=cn-hangzhou", "alikms|cn-hangzhou"},
		{"alikms:k1?region=cn-hangzhou&endpoint=https://kst-hzz1.cryptoservice.kms.aliyuncs.com/", "alikms:k1;region=cn-hangzhou", "alikms|cn-hangzhou"},
		{"alikms:k1?region=cn-hangzhou&endpoint=http://127.0.0.1:8080", "alikms:k1;region=cn-hangzhou;endpoint=http://127.0.0.1:8080", "alikms|cn-hangzhou|127.0.0.1:8080"},
		{"alikms:k1;region=cn-hangzhou;endpoint=http://127.0.0.1:8080", "alikms:k1;region=cn-hangzhou;endpoint=http://127.0.0.1:8080", "alikms|cn-hangzhou|127.0.0.1:8080"},
		{"alikms:acs:kms:cn-hangzhou:123456:key/k1?region=cn-hangzhou", "alikms:acs:kms:cn-hangzhou:123456:key/k1;region=cn-hangzhou", "alikms|cn-hangzhou"},
		{"alikms-instance:key-hzz62f1cb66fa42qo?endpoint=kst-hzz1.cryptoservice.kms.aliyuncs.com&client-key-source=file:/ck.json&password-source=env:PW&ca-source=file:/ca.pem",
			"alikms-instance:key-hzz62f1cb66fa42qo;endpoint=kst-hzz1.cryptoservice.kms.aliyuncs.com", "alikms-instance|kst-hzz1.cryptoservice.kms.aliyuncs.com"},
		{"alikms-instance:alias/app;endpoint=KST-HZZ1.cryptoservice.kms.aliyuncs.com:443", "alikms-instance:alias/app;endpoint=kst-hzz1.cryptoservice.kms.aliyuncs.com:443", "alikms-instance|kst-hzz1.cryptoservice.kms.aliyuncs.com:443"},
		{"alikms-instance:key-1?endpoint=127.0.0.1:9443&insecure&client-key-source=env:CK&password-source=env:PW", "alikms-instance:key-1;endpoint=127.0.0.1:9443", "alikms-instance|127.0.0.1:9443"},
	} {
		r, err := keys.ParseRef(c.in)
		if err != nil {
			t.Errorf("ParseRef(%q): %v", c.in, err)
			continue
		}
		if r.Canonical != c.canonical || r.Redacted != c.canonical || r.Custodian != c.custodian {
			t.Errorf("ParseRef(%q) = %+v; want canonical %q, custodian %q", c.in, r, c.canonical, c.custodian)
		}
		if again, err := keys.ParseRef(r.Canonical); err != nil || again != r {
			t.Errorf("ParseRef(canonical %q) = %+v, %v; want %+v", r.Canonical, again, err, r)
		}
		if !keys.SameKey(c.in, c.canonical) {
			t.Errorf("SameKey(%q, its canonical form) is false", c.in)
		}
		for _, private := range []string{"source", "file:", "env:", "insecure"} {
			if strings.Contains(r.Canonical, private) {
				t.Errorf("canonical %q holds %q", r.Canonical, private)
			}
		}
	}
}

func TestParseRefRefuses(t *testing.T) {
	for _, in := range []string{
		"alikms:",
		"alikms:k1",                     // no region
		"alikms:k1?region=CN_HANGZHOU",  // not a region ID
		"alikms:k 1?region=cn-hangzhou", // not a key
		"alikms:k1?region=cn-hangzhou&region=cn-beijing",        // twice
		"alikms:k1;region=cn-hangzhou?region=cn-beijing",        // twice, path and query
		"alikms:k1?region=cn-hangzhou&regoin=cn-beijing",        // typo
		"alikms:k1?region=cn-hangzhou&endpoint=http://10.0.0.1", // plain http off loopback
		"alikms:k1?region=cn-hangzhou&endpoint=kms.aliyuncs.com/path",
		"alikms:k1?region=cn-hangzhou&endpoint=user:pw@kms.aliyuncs.com",
		"alikms:k1;region=cn-hangzhou;credential-source=file:/ak.json", // a credential in the key's path
		"alikms:k1?region=cn-hangzhou&credential-source=/ak.json",      // not a reference
		"alikms:k1?region=cn-hangzhou&credential-source=env:AK",        // env: is the SDK's own
		"alikms:k1?region=cn-hangzhou&client-key-source=file:/ck.json", // the other scheme's
		"alikms:k1?region=cn-hangzhou&access-key-secret=abc",
		"alikms-instance:key-1",                                                        // no endpoint
		"alikms-instance:key-1?endpoint=http://127.0.0.1:9443",                         // instance API is HTTPS
		"alikms-instance:key-1?endpoint=kst-1.cryptoservice.kms.aliyuncs.com&insecure", // insecure off loopback
		"alikms-instance:key-1?endpoint=127.0.0.1:9443&insecure=yes",
		"alikms-instance:key-1?endpoint=127.0.0.1:9443&password-source=hunter2",
		"alikms-instance:key-1?endpoint=127.0.0.1:9443&region=cn-hangzhou",
		"alikms:" + strings.Repeat("k", 300) + "?region=cn-hangzhou",
	} {
		r, err := keys.ParseRef(in)
		if !errors.Is(err, keys.ErrBadURI) {
			t.Errorf("ParseRef(%q) = %+v, %v; want ErrBadURI", in, r, err)
			continue
		}
		for _, secret := range []string{"hunter2", "pw@", "abc"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("ParseRef(%q): the error repeats %q: %v", in, secret, err)
			}
		}
	}
}

func TestRedactUnparsable(t *testing.T) {
	got := keys.Redact("alikms:k1?region=cn-hangzhou&access-key-secret=abc")
	if strings.Contains(got, "abc") {
		t.Errorf("Redact of a bad reference keeps its query: %q", got)
	}
}

func TestSchemesRegistered(t *testing.T) {
	for _, scheme := range []string{"alikms", "alikms-instance"} {
		if _, err := keys.ParseRef(keys.Example(scheme)); err != nil {
			t.Errorf("the %s example does not parse: %v", scheme, err)
		}
	}
	for mech, scheme := range map[string]string{"alikms": "alikms", "alikms-instance": "alikms-instance"} {
		if got := keys.MechanismScheme(mech); got != scheme {
			t.Errorf("mechanism %s belongs to %q, want %q", mech, got, scheme)
		}
	}
}
