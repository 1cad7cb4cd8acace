// Package hsmio is rekey's PKCS#11 plumbing: it opens tokens named by RFC
// 7512 URIs, logs in with a PIN read from a pin-source, and implements
// keys.KEK for AES keys (AES-GCM through crypto11, AES-KWP / RFC 5649
// through C_WrapKey/C_UnwrapKey) and RSA key pairs (RSA-OAEP). Importing it
// registers the "pkcs11" scheme with package keys.
//
// One crypto11 context per (module, token) lives for the whole process and
// is shared by every DoFn instance: contexts are never closed, because
// closing the last one finalizes the module under everyone's feet.
//
// The rekey keys command (inventory of a token, moving keys between tokens
// under wrap) lives in the subpackage hsmio/inventory, which logs in
// through OpenRawToken.
//
// Limits: tokens are selected by label or serial, keys by label (object) or
// id; SoftHSM2 supports RSA-OAEP with SHA-1 only, so rsa-oaep-sha256 unwrap
// needs a real HSM.
package hsmio
