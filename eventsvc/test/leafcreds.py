"""
FAKE operator-mode credentials for the leaf node tests (never for real use):
an operator, one account ("EDGE") and one user of it, generated once with
nats-io/jwt v2 and nkeys from Debian's Go packages by dev/testcreds/main.go
(GO111MODULE=off GOPATH=/usr/share/gocode go build; the mismatched seed is a
second user's, from nkeys.CreateUser).  nats-server loads the
operator and the account (resolver MEMORY); eventsvc signs the hub's nonce
with the user's credentials.
"""

import os

OPERATOR_JWT = 'eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJaTzZERk8zTFVFTFNGNlROMjNSWENaWUFIUU00SFQ3UkpHRVgzN1pXQkpRR1YyR0E2VzdBIiwiaWF0IjoxNzk2MzA2MjU3LCJpc3MiOiJPQjVLUzVaQU5TQk03NjZNTVRFRkQzSjVMTzZLN0dOQzdYQTNBVjdSMkpCR1ZCVDVCVk5EWFZBNyIsIm5hbWUiOiJ0ZXN0LW9wZXJhdG9yIiwic3ViIjoiT0I1S1M1WkFOU0JNNzY2TU1URUZEM0o1TE82SzdHTkM3WEEzQVY3UjJKQkdWQlQ1QlZORFhWQTciLCJuYXRzIjp7InR5cGUiOiJvcGVyYXRvciIsInZlcnNpb24iOjJ9fQ.wznSMiC0GFo1pyqREhXR6SKWwq5SkC6cIdGrUupq2kfy4ArO4mL3AVlV7jmqMOUOsTrznB7ZFDqgGxk3oSuDAg'

ACCOUNT_PUBLIC_KEY = 'ADGWZO6XX3HAHP4FBIJIYPQSON3SDFDTNFSKFZ324GGX5DE3EBAWAZ7T'

ACCOUNT_JWT = 'eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJCMzNHWUJTRTVCUlpHRUdMVVFPREhQNUFZREpTWTJISk80MklLV01FSzJTWjdNSFJVV0VRIiwiaWF0IjoxNzk2MzA2MjU3LCJpc3MiOiJPQjVLUzVaQU5TQk03NjZNTVRFRkQzSjVMTzZLN0dOQzdYQTNBVjdSMkpCR1ZCVDVCVk5EWFZBNyIsIm5hbWUiOiJFREdFIiwic3ViIjoiQURHV1pPNlhYM0hBSFA0RkJJSklZUFFTT04zU0RGRFRORlNLRlozMjRHR1g1REUzRUJBV0FaN1QiLCJuYXRzIjp7ImxpbWl0cyI6eyJzdWJzIjotMSwiZGF0YSI6LTEsInBheWxvYWQiOi0xLCJpbXBvcnRzIjotMSwiZXhwb3J0cyI6LTEsIndpbGRjYXJkcyI6dHJ1ZSwiY29ubiI6LTEsImxlYWYiOi0xfSwiZGVmYXVsdF9wZXJtaXNzaW9ucyI6eyJwdWIiOnt9LCJzdWIiOnt9fSwidHlwZSI6ImFjY291bnQiLCJ2ZXJzaW9uIjoyfX0.Q-ZFgTSJ0F_nwmCQvesjgEiUoGMIyzS5XQicafcvjoLHqLNgW7Ep1WB6yLWDyfvfcjk2oRgoMJIM8C0QNHTXAQ'

USER_CREDS = '-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJEM0pFNVI0UFlXWEozS05VMlIzUUZLUE5CSzRWVEpMUjRQUUpDRTUySjdJSkFFVkJJNVhRIiwiaWF0IjoxNzk2MzA2MjU3LCJpc3MiOiJBREdXWk82WFgzSEFIUDRGQklKSVlQUVNPTjNTREZEVE5GU0tGWjMyNEdHWDVERTNFQkFXQVo3VCIsIm5hbWUiOiJsZWFmIiwic3ViIjoiVUJWR0NFN1ZEUzY2NTVWVkNXWVVVVFZBNzdBUkgyQVFZRFNIVlhNTkJGQ0ZZQzNOUzVXRk5NTDciLCJuYXRzIjp7InB1YiI6e30sInN1YiI6e30sInN1YnMiOi0xLCJkYXRhIjotMSwicGF5bG9hZCI6LTEsInR5cGUiOiJ1c2VyIiwidmVyc2lvbiI6Mn19.ISCN1eaFFFTHt5Gtvz4bQW8XHpc884Ymu6jxD-GFa9beEi4aWipNeCXGQCqSXNfo_hSmjiEeCWlsOKzGJgwNBw\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\nNKEYs are sensitive and should be treated as secrets.\n\n-----BEGIN USER NKEY SEED-----\nSUAEQLM2ALZAUK2TSL5RJHUKZQ6LY2TMUEIPPOO3LDJJCIRSIIYGONJYKM\n------END USER NKEY SEED------\n\n*************************************************************\n'

#: The same JWT with another user's seed: its signature cannot match.
MISMATCHED_CREDS = '-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJEM0pFNVI0UFlXWEozS05VMlIzUUZLUE5CSzRWVEpMUjRQUUpDRTUySjdJSkFFVkJJNVhRIiwiaWF0IjoxNzk2MzA2MjU3LCJpc3MiOiJBREdXWk82WFgzSEFIUDRGQklKSVlQUVNPTjNTREZEVE5GU0tGWjMyNEdHWDVERTNFQkFXQVo3VCIsIm5hbWUiOiJsZWFmIiwic3ViIjoiVUJWR0NFN1ZEUzY2NTVWVkNXWVVVVFZBNzdBUkgyQVFZRFNIVlhNTkJGQ0ZZQzNOUzVXRk5NTDciLCJuYXRzIjp7InB1YiI6e30sInN1YiI6e30sInN1YnMiOi0xLCJkYXRhIjotMSwicGF5bG9hZCI6LTEsInR5cGUiOiJ1c2VyIiwidmVyc2lvbiI6Mn19.ISCN1eaFFFTHt5Gtvz4bQW8XHpc884Ymu6jxD-GFa9beEi4aWipNeCXGQCqSXNfo_hSmjiEeCWlsOKzGJgwNBw\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\nNKEYs are sensitive and should be treated as secrets.\n\n-----BEGIN USER NKEY SEED-----\nSUAJ5ZO2STLMDCI7J2QKRKZE5KNFDU5B4G5L2SK4CSGWEZ5V377RQGXT6I\n------END USER NKEY SEED------\n\n*************************************************************\n'


def write(directory: str) -> dict:
    """The files, written into C{directory}: their paths by name (op.jwt, user.creds, bad.creds)."""
    paths = {}
    for name, text in (("op.jwt", OPERATOR_JWT), ("user.creds", USER_CREDS), ("bad.creds", MISMATCHED_CREDS)):
        paths[name] = os.path.join(directory, name)
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


def hub_config(leaf_port: int, operator_path: str) -> str:
    """A nats-server hub in operator mode, with this account preloaded, accepting leaf nodes on C{leaf_port}."""
    return 'operator: "%s"\nresolver: MEMORY\nresolver_preload: { %s: "%s" }\nleafnodes { port: %d }\n' % (
        operator_path, ACCOUNT_PUBLIC_KEY, ACCOUNT_JWT, leaf_port,
    )
