"""The proxy's dashboard: one self-contained page that polls ``/stats.json`` every second.

Theory of operation
-------------------
No CDN, no web fonts, no build step: a page of HTML and a few lines of script that fetch
``/stats.json`` and redraw, so it works in an offline classroom and reads top to bottom. Every
value from the proxy is escaped before it is shown, because URLs and client names in the
recent-requests table come from the clients themselves.
"""

DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>minireactor proxy</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .5em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:9em}
.card b{display:block;font-size:1.5em} .err b{color:#b22}
.cols{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:.2em .5em}
th{background:#eee;text-align:left} .bar{background:#4a8;height:.8em;display:inline-block}
tr.bad td{color:#b22} code{font-size:.9em} #live{font-size:.85em;color:#666}
#live.down{color:#b22;font-weight:bold}
</style></head>
<body><h1>minireactor proxy</h1>
<p id="live">connecting...</p>
<div class="cards">
<div class="card">open connections<b id="open">-</b></div>
<div class="card">requests/s<b id="rps">-</b></div>
<div class="card">requests<b id="total">-</b></div>
<div class="card err">errors (4xx/5xx)<b id="errors">-</b></div>
<div class="card">bytes in<b id="bin">-</b></div>
<div class="card">bytes out<b id="bout">-</b></div>
<div class="card">cache hit ratio<b id="hit">-</b></div>
<div class="card">cache<b id="centries">-</b></div>
<div class="card">blocklist rules<b id="rules">-</b></div>
<div class="card">uptime<b id="uptime">-</b></div>
</div>
<div class="cols">
<div><h2>Connections by session state</h2><table id="states"></table></div>
<div><h2>Results</h2><table id="results"></table></div>
<div><h2>Responses by status</h2><table id="statuses"></table></div>
<div><h2>Cache and origins</h2><table id="more"></table></div>
</div>
<p>Blocklist: <span id="reload">-</span></p>
<h2>Recent requests</h2>
<table id="recent"></table>
<script>
const ENT={"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"};
function esc(s){return String(s).replace(/[&<>"]/g,c=>ENT[c]);}
function size(n){const u=["B","KiB","MiB","GiB"];let i=0;while(n>=1024&&i<3){n/=1024;i++;}
return (i?n.toFixed(1):n)+" "+u[i];}
function hms(s){s=Math.round(s);const h=Math.floor(s/3600),m=Math.floor(s/60)%60;
return (h?h+"h ":"")+(h||m?m+"m ":"")+(s%60)+"s";}
function set(id,v){document.getElementById(id).textContent=v;}
function table(id,head,rows){let t="<tr>"+head.map(h=>"<th>"+h+"</th>").join("")+"</tr>";
for(const r of rows)t+="<tr"+(r.bad?" class=bad":"")+">"+r.cells.map(c=>"<td>"+c+"</td>")
.join("")+"</tr>";document.getElementById(id).innerHTML=t;}
function show(d){
 set("open",d.connections.open);set("rps",d.requests.per_second);set("total",d.requests.total);
 set("errors",d.requests.errors);set("bin",size(d.bytes.from_clients));
 set("bout",size(d.bytes.to_clients));set("uptime",hms(d.uptime_seconds));
 set("rules",d.blocklist.rules);
 const c=d.cache;
 set("hit",c.enabled?(100*c.hit_ratio).toFixed(1)+" %":"off");
 set("centries",c.enabled?c.entries+" entries, "+size(c.bytes)+" of "+size(c.max_bytes):"off");
 const r=d.blocklist.last_reload;
 const n=d.blocklist.rules,rules=n+(n===1?" rule":" rules");
 const rejected=r&&r.rejected?"; "+r.rejected+(r.rejected===1?" line":" lines")+" rejected":"";
 set("reload",!(r&&r.at)?rules:r.ok?"loaded "+new Date(r.at*1000).toLocaleTimeString()+
  ": "+r.rules+" rules (+"+r.added+", -"+r.removed+") "+r.message+rejected:
  "reload failed "+new Date(r.at*1000).toLocaleTimeString()+": "+(r.reason||r.message)+
  "; still using "+rules+rejected);
 let max=1;for(const v of Object.values(d.connections.by_state))max=Math.max(max,v);
 table("states",["state","connections",""],Object.entries(d.connections.by_state).map(
  ([k,v])=>({cells:["<code>"+k+"</code>",v,"<span class=bar style='width:"+(120*v/max)+
  "px'></span>"]})));
 table("results",["result","requests"],Object.entries(d.requests.by_result).map(
  ([k,v])=>({cells:["<code>"+esc(k)+"</code>",v]})));
 table("statuses",["status","responses"],Object.entries(d.requests.by_status).map(
  ([k,v])=>({bad:+k>=400,cells:[k,v]})));
 const more=[["connections since start",d.connections.total],
  ["proxy's own pages served",d.requests.local],
  ["idle origin connections",d.upstream_pool.idle],["origin connection reuses",
  d.upstream_pool.reuses]];
 if(c.enabled)more.push(["cache hits",c.hits],["cache misses",c.misses],
  ["revalidations",c.revalidations],["collapsed requests",c.collapsed]);
 table("more",["counter","value"],more.map(x=>({cells:x})));
 table("recent",["time","client","method","URL","status","bytes","ms","result"],d.recent.map(
  x=>({bad:x.status>=400,cells:[new Date(x.at*1000).toLocaleTimeString(),esc(x.client),
  esc(x.method),esc(x.url),x.status,x.bytes,x.ms,esc(x.result)]})));
 const live=document.getElementById("live");live.className="";
 live.textContent="live, updated "+new Date().toLocaleTimeString();
}
function down(){const live=document.getElementById("live");live.className="down";
 live.textContent="disconnected: the proxy is not answering";}
function tick(){fetch("/stats.json",{cache:"no-store"}).then(r=>r.json()).then(show)
 .catch(down).finally(()=>setTimeout(tick,1000));}
tick();
</script></body></html>
"""
