// Package inventory is the logic of rekey keys: it lists the keys of a
// PKCS#11 token and what can happen to each when it moves to another HSM
// (transferable, re-create, public-only), moves the extractable ones to a
// target token wrapped under a transport key made for the run and proves
// each copy with a check value computed inside both HSMs (Copy), and
// exports the public keys of signing key pairs that cannot move, with
// successor pairs on the target (ExportPublic, CreateSuccessor).
//
// Key material never leaves a token in clear: keys leave the source only
// through C_WrapKey and enter the target only through C_UnwrapKey (first
// as a session object that is checked, then as the stored copy), and
// every attribute read goes through one reader (KeyToken.attr) that
// refuses CKA_VALUE and the RSA private components (SecretAttr). A
// KeyToken can report each object-touching call (Trace), which is how the
// tests prove that no key value is ever asked for.
//
// It is a subpackage of hsmio, and imports miekg/pkcs11 itself, because
// its work is object-level PKCS#11: attribute templates, mechanisms,
// handles, C_WrapKey from one token into another. Routing those calls
// through hsmio would mean re-exporting most of miekg/pkcs11 from there.
// From hsmio it takes only the login (OpenRawToken: one login per token
// for the whole process, shared with the KEKs), the parsing of token URIs
// (ParseTokenURI) and the mapping of PKCS#11 errors onto the keys
// sentinels (Classify).
//
// Limits: objects are paired and copied by label, so two source keys with
// one label collide on the target; private keys travel only under the
// aes-kwp transport; keys whose check value cannot be computed inside the
// target HSM are not copied (their trial copy, a session object, is
// destroyed: nothing reaches the target's store unverified); EC public
// keys are exported for P-224/256/384/521 and Ed25519 only. docs/KEYS.md
// describes the commands.
package inventory
