// Package awskms is rekey's custodian for keys in AWS KMS: a keys.KEK over
// aws-sdk-go-v2's KMS client that wraps DEKs with Encrypt, unwraps them
// with Decrypt, generates them with GenerateDataKey and moves them between
// two KMS keys with ReEncrypt, without the DEK leaving KMS. Importing it
// registers the "awskms" scheme and the "aws-kms" wrap mechanism.
//
// # References
//
//	awskms:alias/rekey-prod?region=eu-west-1
//	awskms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//	awskms:arn:aws:kms:eu-west-1:111122223333:alias/rekey-prod
//	awskms:1234abcd-12ab-34cd-56ef-1234567890ab?region=eu-west-1&profile=prod
//	awskms:alias/rekey-test?region=eu-west-1&endpoint=http://127.0.0.1:4599
//
// A key is named as AWS's KeyId takes it (key ARN, alias ARN, alias/NAME,
// key id). Parameters: region (implied by an ARN), endpoint (a VPC
// endpoint, a test server) and profile (a profile of the shared config
// files). Credentials are never part of a reference: they come from the
// SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
// AWS_SESSION_TOKEN, AWS_PROFILE or profile=, the shared files, web
// identity, ECS and EC2 roles), and so does the region when the reference
// has none (AWS_REGION, the profile). AWS_ENDPOINT_URL_KMS works too.
//
// The canonical form, which DEK tables record, names the key and its
// region only ("awskms:eu-west-1:alias/rekey-prod"); an opened KEK's URI
// is its key ARN, so a table records the key that wrapped even when the
// job named an alias that later moves. Endpoint and profile say how to
// reach a key, not which key it is, and are left out. The custodian (rate
// limits) is "awskms|REGION|ACCOUNT": AWS meters request quotas per
// account and region, whatever the endpoint.
//
// # Binding
//
// A keys.Binding becomes the KMS encryption context, which KMS binds to
// the ciphertext as additional authenticated data:
//
//	Binding.DEKID          -> "rekey:dek_id": DEKID   (when not empty)
//	Binding.Context[k] = v -> k: v                    (as it is)
//	Binding.AAD[i]         -> "rekey:aad:<i>": AAD[i] (i = 0, 1, ...)
//
// A zero binding sends no encryption context. Context keys starting with
// "rekey:" are refused, so that no binding can pass for another; a
// context written by another tool passes through unchanged. Another tool
// unwraps a DEK of rekey's own tables with, e.g.,
//
//	aws kms decrypt --key-id ARN --ciphertext-blob fileb://dek.bin --encryption-context rekey:dek_id=tenant-42
//
// Decrypt always names the configured key (KeyId), so a ciphertext of
// another key is refused (IncorrectKeyException) instead of decrypted
// with whichever key it names.
//
// # Server-side rewrap
//
// Rewrap (keys.Rewrapper) calls ReEncrypt from an aws-kms key to another
// reached through the same KMS: same region and endpoint, same profile.
// The target may be in another account (named by its ARN). ReEncrypt runs
// with the source key's credentials, which need kms:ReEncryptFrom on the
// source key and kms:ReEncryptTo on the target key (for a target in
// another account: granted by that key's key policy and by an IAM policy
// in the caller's account). KMS keys are regional: across regions, or
// with different profiles, rekey unwraps with the source and wraps with
// the target instead (keys.CanRewrap is false). KMS cannot check rekey's
// KCV, so RewrapResult.Proof is empty and Verified false: the caller
// verifies by unwrapping the new wrap with the target.
//
// # Failures and rate
//
// The SDK's own retryer is off (aws.NopRetryer): keys.WithRetry retries
// with rekey's backoff and its shared rate limit, so a throttled run slows
// down instead of retrying in two places. ThrottlingException and
// LimitExceededException are keys.ErrThrottled (retryable);
// KMSInternalException, DependencyTimeoutException, KeyUnavailableException,
// 5xx answers, timeouts (30 s per request) and dropped connections are
// retryable; NotFoundException is keys.ErrKeyNotFound; DisabledException,
// KMSInvalidStateException and AccessDeniedException are
// keys.ErrNotPermitted; unrecognised or expired credentials and bad
// signatures are keys.ErrAuthFailed; InvalidCiphertextException and
// IncorrectKeyException are keys.ErrUnwrapFailed. Errors carry the code,
// HTTP status and request id, never the service's message.
//
// The default rate (DefaultRate, 10,000 requests per second per account
// and region) is the smallest default of the "Cryptographic operations
// (symmetric) request rate" quota, which Encrypt, Decrypt, ReEncrypt and
// GenerateDataKey share: 10,000/s, 20,000/s in some regions and more in
// the largest, per the AWS KMS Developer Guide, "Request quotas",
// https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html
// (in 2018 it was 5,500/s, 10,000/s in us-east-1, us-west-2 and eu-west-1).
// The quota is shared by every caller in the account and region, so set
// --hsm-rate lower when other workloads use KMS there.
//
// Limits: the DEK passes through the SDK's request and response buffers
// (base64 JSON), which are not zeroed; only the plaintext slice Decrypt
// and GenerateDataKey return is. Symmetric keys only (no RSA key pairs,
// no HMAC keys). Multi-Region replicas are separate keys here: a key
// replicated to another region is not rewrapped across regions inside.
// Grant tokens are not passed.
package awskms
