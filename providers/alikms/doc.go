// Package alikms is rekey's custodian for Alibaba Cloud Key Management
// Service, in two schemes: alikms, the KMS OpenAPI (2016-01-20) behind the
// shared gateway (or a dedicated one), through
// github.com/alibabacloud-go/kms-20160120/v3; and alikms-instance, the KMS
// instance API that software and hardware KMS instances serve (protobuf
// over HTTPS, signed with an application access point's ClientKey),
// through github.com/aliyun/alibabacloud-dkms-gcs-go-sdk. Importing the
// package registers both.
//
// # References
//
//	alikms:<key>?region=<region>[&endpoint=<host>][&credential-source=file:/path]
//	alikms-instance:<key>?endpoint=<kst-...>.cryptoservice.kms.aliyuncs.com
//	    &client-key-source=file:/path/clientKey_....json
//	    &password-source=env:VAR|file:/path[&ca-source=file:/path/PrivateKmsCA_kst-....pem]
//
// <key> is a key ID, alias/<name> or (alikms) a key ARN. region and
// endpoint may also be written as ;name=value after the key; credential
// references only in the query. endpoint= may be http://127.0.0.1:<port>
// for a test server; insecure (alikms-instance) skips TLS verification,
// for 127.0.0.1 and localhost only. The canonical form DEK tables record is
// alikms:<key>;region=<region> (plus ;endpoint= when it is not an
// *.aliyuncs.com host: the VPC and public endpoints reach the same key) and
// alikms-instance:<key>;endpoint=<host>. A key opened by alias also
// matches rows that name the key ID it resolved to. The custodian, whose
// rate limit is shared, is alikms|<region> (the account's gateway quota)
// or alikms-instance|<endpoint> (one instance).
//
// # Credentials
//
// alikms: credential-source=file:/path names a JSON file
// {"AccessKeyId": ..., "AccessKeySecret": ..., "SecurityToken": ...}
// (SecurityToken for STS; the whole answer of an STS AssumeRole, with its
// "Credentials" member, is read too). Without it, the SDK's usual
// environment: ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET
// and ALIBABA_CLOUD_SECURITY_TOKEN, then its default chain (OIDC role,
// ~/.alibabacloud/credentials, the ECS RAM role named by
// ALIBABA_CLOUD_ECS_METADATA). alikms-instance: the ClientKey JSON file and
// its password as the console hands them out, and the instance's CA
// certificate. Secrets are held as Secret (prints ***) and reach only the
// SDK configuration; errors carry the server's status, error code and
// request ID, never its message, and never a request URL (the gateway SDK
// sends Encrypt's plaintext in the query). Open refuses to run while
// DEBUG=tea or DEBUG=credential turns on an SDK log that would print data
// keys or credentials.
//
// # What a wrap binds
//
// alikms binds a keys.Binding as the EncryptionContext of Encrypt,
// Decrypt and ReEncrypt: each Context pair as it is; the dek_id as
// "rekey:dek_id"; AAD element i as "rekey:aad:<i>" (decimal i, value in
// standard padded base64). An unbound key sends none. Context names
// starting with "rekey:" and text that is not UTF-8 are refused. Another
// tool decrypts rekey's wraps by sending the same context, and rekey
// unwraps another tool's by giving its context as Binding.Context.
//
// alikms-instance binds it as the Aad of AES_GCM, byte for byte what the
// pkcs11 scheme's aes-gcm binds: nothing when unbound,
// schemas.DEKAAD(dek_id) ("rekey.dek.v1", 0x00, dek_id) for a dek_id
// alone, schemas.BindingAAD otherwise (at most 8192 bytes).
//
// # Wrapped keys
//
// alikms stores the CiphertextBlob base64-decoded (encode it again, padded
// standard base64, to call Decrypt). alikms-instance stores Encrypt's Iv
// and CiphertextBlob, which Decrypt both needs, as version 1 (byte 0x01),
// the IV's length (0x0c), the IV, the CiphertextBlob; at most 4096 bytes.
//
// # Rates, retries, rewrap
//
// Default rates: alikms 1000 operations/s, the shared gateway's quota for
// symmetric cryptographic operations per account and region ("QPS quotas
// of KMS instances", help/en/kms/key-management-service/product-overview/
// performance-data; older regions document 750); alikms-instance 1000/s,
// as the instance API's quota is the computing performance bought with the
// instance (same page): set --hsm-rate to yours. Throttling (HTTP 429
// Rejected.Throttling, kms/support/limits), 5xx answers, timeouts and
// broken connections are retryable; the SDKs' own retryers are off, so
// keys.WithRetry governs. Error codes are mapped from the gateway's common
// codes (doc-detail/69008), Decrypt's (Forbidden.KeyNotFound,
// Rejected.Disabled, Rejected.PendingDeletion, Rejected.Unavailable) and
// the instance API's common codes (developer-reference/common-error-codes-1).
//
// Between two alikms keys of one region signed with one AccessKey, a
// rewrap is one ReEncrypt: the DEK never leaves KMS. It is not Verified
// (KMS checks no KCV); the caller unwraps the result. The instance API has
// no ReEncrypt: moving DEKs to a KMS instance, as Alibaba's region
// migration runbook does, is an unwrap with the source and a wrap with the
// instance.
//
// # Limits
//
// The SDKs take no context: a cancelled call returns at once, and its
// request ends within the 30 s read timeout. The SDKs hold the plaintext in
// Go strings and buffers rekey cannot zero. ReEncrypt does not say which
// key the source ciphertext was under, so a source wrapped by another key
// of the same account is moved rather than refused. The instance API has
// no DescribeKey: Open probes the key with an Encrypt of a throwaway value,
// and an access point that does not allow Encrypt leaves key and state
// unchecked until the first unwrap. Keys whose existing ciphertexts were
// written by other tools with a raw Aad cannot be named by a Binding.
// Both SDKs keep one HTTP transport per endpoint; alikms-instance keeps
// one per CA and ClientKey as well (through the unused Socks5NetWork
// setting, see instanceConfig).
package alikms
