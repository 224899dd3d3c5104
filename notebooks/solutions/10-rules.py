# Exercise 10-rules: one rule per line (the forms of `rules = parse(...)` above); `#` comments.
RULES = """
tracker.test        # the host and every subdomain: whole labels, never mytracker.test
*.ads.test          # subdomains only: ads.test itself keeps its opt-out page
=cdn.test           # this host only, not img.cdn.test
news.test/ads       # /ads, /ads/..., /ads?...; not /adsense or /ads-policy; never a CONNECT
shop.test:8080      # that port only
192.168.0.0/16      # literal addresses in that network
"""
