package alikms

import (
	"errors"
	"maps"
	"testing"

	"rekey/providers/keys"
	"rekey/schemas"
)

// TestEncryptionContextMapping pins the documented mapping: other tools
// decrypt rekey's wraps by sending the same EncryptionContext.
func TestEncryptionContextMapping(t *testing.T) {
	for _, c := range []struct {
		b    keys.Binding
		want map[string]interface{}
	}{
		{keys.Binding{}, nil},
		{keys.ByID("tenant-42"), map[string]interface{}{"rekey:dek_id": "tenant-42"}},
		{keys.Binding{Context: map[string]string{"app": "billing"}}, map[string]interface{}{"app": "billing"}},
		{keys.Binding{DEKID: "d", Context: map[string]string{"app": "x"}, AAD: []string{"a", ""}},
			map[string]interface{}{"rekey:dek_id": "d", "app": "x", "rekey:aad:0": "YQ==", "rekey:aad:1": ""}},
	} {
		got, err := encryptionContext(c.b)
		if err != nil || !maps.Equal(got, c.want) {
			t.Errorf("encryptionContext(%s) = %v, %v; want %v", c.b, got, err, c.want)
		}
	}
	for _, b := range []keys.Binding{
		{Context: map[string]string{"rekey:dek_id": "x"}},
		{Context: map[string]string{"rekey:other": "x"}},
		{Context: map[string]string{"k": "\xff"}},
		{DEKID: "\xff"},
	} {
		if _, err := encryptionContext(b); !errors.Is(err, errBinding) {
			t.Errorf("encryptionContext(%s): %v; want errBinding", b, err)
		}
	}
}

// TestInstanceAADMapping pins the Aad a KMS instance binds: the same bytes
// as the pkcs11 scheme's aes-gcm.
func TestInstanceAADMapping(t *testing.T) {
	full := keys.Binding{DEKID: "d", Context: map[string]string{"k": "v"}, AAD: []string{"a"}}
	for _, c := range []struct {
		b    keys.Binding
		want []byte
	}{
		{keys.Binding{}, nil},
		{keys.ByID("tenant-42"), schemas.DEKAAD("tenant-42")},
		{full, schemas.BindingAAD("d", map[string]string{"k": "v"}, []string{"a"})},
	} {
		got, err := instanceAAD(c.b)
		if err != nil || string(got) != string(c.want) {
			t.Errorf("instanceAAD(%s) = %q, %v; want %q", c.b, got, err, c.want)
		}
	}
	if _, err := instanceAAD(keys.Binding{AAD: []string{string(make([]byte, maxAad))}}); err == nil {
		t.Error("an Aad over the instance's 8192-byte limit is accepted")
	}
}
