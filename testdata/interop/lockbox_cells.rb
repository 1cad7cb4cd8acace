#!/usr/bin/ruby
# frozen_string_literal: true
#
# Third-party AES-GCM cell writer/reader backed by Ruby's lockbox gem
# (Debian package ruby-lockbox, 0.6.4). Run with /usr/bin/ruby.
#
# JSON lines on stdin -> JSON lines on stdout, one reply per request, in order:
#   {"op":"encrypt","key":"<hex>","aad":"<utf8>"|null,"pt":"<base64>"} -> {"cell":"<lockbox base64 text>"}
#   {"op":"decrypt","key":"<hex>","aad":"<utf8>"|null,"cell":"<lockbox base64 text>"}
#        -> {"pt":"<base64>"} or {"error":"<message>"} (authentication failure)
#
# Cell produced by Lockbox.new(key: hex, encode: true).encrypt(pt, associated_data: aad):
#   Base64.strict_encode64(nonce(12) || ciphertext || tag(16)), AES-256-GCM.
#
# Lockbox's aes-gcm only accepts 32-byte keys; a 16-byte key (allowed by the
# contract) gets {"error":"unsupported key size: ..."} instead of a cell/pt.
# Anything outside the contract (bad JSON, unknown op, missing/mistyped field,
# non-hex key, key not 16/32 bytes, non-strict-base64 pt) is fatal: message on
# stderr, exit status 2.

# lockbox 0.6.4 defines Lockbox::IO < StringIO but never requires "stringio"
# (Rails loads it); without this line `require "lockbox"` fails on plain Ruby.
require "stringio"
require "lockbox"
require "json"
require "base64"

$stdout.sync = true

def die(lineno, msg)
  warn "lockbox_cells.rb: line #{lineno}: malformed input: #{msg}"
  exit 2
end

def fetch_string(req, name, lineno)
  v = req.fetch(name) { die(lineno, "missing field #{name.inspect}") }
  die(lineno, "field #{name.inspect} must be a string") unless v.is_a?(String)
  v
end

lineno = 0
$stdin.each_line do |line|
  lineno += 1
  next if line.strip.empty?

  begin
    req = JSON.parse(line.chomp)
  rescue JSON::ParserError => e
    die(lineno, "invalid JSON: #{e.message.lines.first.to_s.strip}")
  end
  die(lineno, "request must be a JSON object") unless req.is_a?(Hash)

  op = fetch_string(req, "op", lineno)
  die(lineno, "unknown op #{op.inspect}") unless %w[encrypt decrypt].include?(op)

  key_hex = fetch_string(req, "key", lineno)
  die(lineno, "key is not hex") unless key_hex.match?(/\A(?:[0-9a-fA-F]{2})+\z/)
  key_len = key_hex.length / 2
  die(lineno, "key must be 16 or 32 bytes, got #{key_len}") unless [16, 32].include?(key_len)

  die(lineno, "missing field \"aad\" (use null for none)") unless req.key?("aad")
  aad = req["aad"]
  die(lineno, "field \"aad\" must be a string or null") unless aad.nil? || aad.is_a?(String)
  die(lineno, "aad is not valid UTF-8") if aad && !aad.valid_encoding?

  payload =
    if op == "encrypt"
      pt_b64 = fetch_string(req, "pt", lineno)
      begin
        pt = Base64.strict_decode64(pt_b64)
      rescue ArgumentError
        die(lineno, "pt is not strict base64")
      end
      nil
    else
      fetch_string(req, "cell", lineno)
    end

  reply =
    if key_len != 32
      {"error" => "unsupported key size: lockbox #{Lockbox::VERSION} aes-gcm requires a 32-byte key, got #{key_len}"}
    else
      # The documented API: a 64-hex-digit key string, encode: true (base64 cells).
      box = Lockbox.new(key: key_hex, encode: true)
      if op == "encrypt"
        {"cell" => box.encrypt(pt, associated_data: aad)}
      else
        begin
          {"pt" => Base64.strict_encode64(box.decrypt(payload, associated_data: aad))}
        rescue Lockbox::DecryptionError => e
          {"error" => "#{e.class}: #{e.message}"}
        end
      end
    end

  $stdout.write(JSON.generate(reply), "\n")
end
