"""Web pages shaped like real ones, each with its main text marked by hand, for measuring what the
page tool keeps (tests/test_page_extraction.py, bench/page_extraction.py).

How they were built: written by hand for this project, modelled on the layouts of five common kinds
of page (a news article, an encyclopedia article with an infobox and references, a blog post with a
sidebar and comments, a software documentation page, a recipe behind a cookie banner). Each carries
the boilerplate such pages carry: site navigation, breadcrumbs, cookie and newsletter banners,
share buttons, related-article lists, footers, inline scripts, JSON-LD and styles. ``main`` is the
text a reader would call the page's content, paragraph by paragraph, marked by hand: the headline
and the body paragraphs (tables and list items of the body included), nothing else. The texts are
invented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MarkedPage:
    name: str
    html: str
    main: list[str]  # the main text, paragraph by paragraph


_SCRIPT = """<script>window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments);}
gtag('js', new Date()); gtag('config', 'G-XXXXXXX'); var adSlots = ['top', 'side', 'bottom'];</script>"""
_STYLE = "<style>body{font-family:sans-serif} .nav a{margin:0 4px} .cookie{position:fixed;bottom:0}</style>"

_NEWS_MAIN = [
    "River city approves new bridge after decade of debate",
    "The city council voted seven to two on Tuesday evening to approve the construction of a new bridge across the Alder River, ending more than ten years of public hearings, lawsuits and competing designs.",
    "The four-lane crossing will connect the old harbour district with the growing neighbourhoods on the eastern bank, where the population has nearly doubled since 2015.",
    "Construction is expected to begin next spring and to last about three years. The council estimates the cost at 410 million dollars, two thirds of which will come from a regional infrastructure fund.",
    "Opponents argued that the bridge would bring heavy traffic into the harbour district and asked for a tunnel instead. Council member Ilse Marten, who voted against the plan, said the city had not studied the effect on air quality near two primary schools.",
    "Supporters pointed to the ferry, which carries about nine thousand passengers on a weekday and is regularly suspended in winter storms. \"People on the east bank have waited long enough,\" said the mayor after the vote.",
    "A first public presentation of the final design is planned for March at the harbour museum.",
]

NEWS = MarkedPage(
    "news",
    f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>River city approves new bridge | The Alder Courier</title>
{_STYLE}{_SCRIPT}
<script type="application/ld+json">{{"@context":"https://schema.org","@type":"NewsArticle","headline":"River city approves new bridge"}}</script>
</head><body>
<div class="cookie" id="cookie-banner"><p>We use cookies to improve your experience and to show you personalised advertising. By continuing to browse you agree to our use of cookies.</p><button>Accept all</button><button>Manage settings</button></div>
<header><div class="logo"><a href="/">The Alder Courier</a></div>
<nav class="nav"><ul><li><a href="/news">News</a></li><li><a href="/politics">Politics</a></li><li><a href="/business">Business</a></li><li><a href="/sport">Sport</a></li><li><a href="/culture">Culture</a></li><li><a href="/opinion">Opinion</a></li><li><a href="/subscribe">Subscribe</a></li><li><a href="/login">Sign in</a></li></ul></nav></header>
<main><article>
<div class="breadcrumbs"><a href="/">Home</a> &gt; <a href="/news">News</a> &gt; <a href="/news/local">Local</a></div>
<h1>{_NEWS_MAIN[0]}</h1>
<div class="byline">By Tomas Reiner, city reporter · Published 14 May 2026, 21:40 · 4 min read</div>
<div class="share"><a href="#">Share on Facebook</a> <a href="#">Share on X</a> <a href="#">Email this article</a></div>
{"".join(f"<p>{p}</p>" for p in _NEWS_MAIN[1:4])}
<aside class="ad"><p>Advertisement</p><p>Subscribe today: your first three months for just one dollar a week.</p></aside>
{"".join(f"<p>{p}</p>" for p in _NEWS_MAIN[4:])}
</article>
<section class="related"><h2>More from Local</h2><ul><li><a href="/a">School district announces new start times for autumn</a></li><li><a href="/b">Harbour festival returns with a record number of boats</a></li><li><a href="/c">Police appeal for witnesses after warehouse fire on Dock Road</a></li><li><a href="/d">Five restaurants to try this weekend in the old town</a></li></ul></section>
</main>
<div class="newsletter"><h3>Get the morning briefing</h3><p>The day's most important stories, in your inbox every morning at six.</p><form><input type="email" placeholder="Your email"><button>Sign up</button></form></div>
<footer><ul><li><a href="/about">About us</a></li><li><a href="/contact">Contact</a></li><li><a href="/privacy">Privacy policy</a></li><li><a href="/terms">Terms of use</a></li><li><a href="/ads">Advertise with us</a></li></ul><p>© 2026 The Alder Courier Media Group. All rights reserved. Reproduction in whole or in part without permission is prohibited.</p></footer>
<script>document.getElementById('cookie-banner').onclick = function () {{ this.remove(); }};</script>
</body></html>""",
    _NEWS_MAIN,
)

_WIKI_MAIN = [
    "Kestrel Lake",
    "Kestrel Lake is a glacial lake in the northern highlands of the fictional province of Varnia. With a surface area of 212 square kilometres it is the largest freshwater lake in the province and the source of the Tessel River.",
    "The lake formed at the end of the last glacial period, about twelve thousand years ago, when a retreating ice sheet left a deep basin dammed by a moraine at its southern end. Its greatest measured depth is 184 metres.",
    "Geography",
    "The lake is long and narrow, stretching 41 kilometres from north to south and at most seven kilometres wide. Eleven islands lie in the lake; the largest, Hollin Island, has a permanent population of about three hundred people.",
    "Ecology",
    "Kestrel Lake is home to a landlocked population of Arctic char and to one of the largest breeding colonies of black-throated divers in the region. Since 1998 the northern shore has been a protected nature reserve.",
    "History",
    "Fishing villages have existed on the shore since at least the ninth century. A steamboat service between the southern town of Dunmere and Hollin Island operated from 1871 until 1962, when a road causeway was completed.",
]

WIKI = MarkedPage(
    "encyclopedia",
    f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Kestrel Lake - Freepedia</title>{_STYLE}
<script>var wgPageName = "Kestrel_Lake"; var wgRevisionId = 118822031;</script></head><body>
<div id="site-notice">Freepedia is supported by readers like you. Please donate today to keep it free.</div>
<div id="left-navigation"><ul><li><a href="/main">Main page</a></li><li><a href="/contents">Contents</a></li><li><a href="/current">Current events</a></li><li><a href="/random">Random article</a></li><li><a href="/about">About Freepedia</a></li><li><a href="/help">Help</a></li><li><a href="/community">Community portal</a></li><li><a href="/changes">Recent changes</a></li></ul>
<h3>Tools</h3><ul><li><a href="/links">What links here</a></li><li><a href="/upload">Upload file</a></li><li><a href="/cite">Cite this page</a></li><li><a href="/print">Printable version</a></li></ul>
<h3>Languages</h3><ul><li><a href="/de">Deutsch</a></li><li><a href="/fr">Français</a></li><li><a href="/es">Español</a></li><li><a href="/sv">Svenska</a></li></ul></div>
<div id="content"><h1 id="firstHeading">{_WIKI_MAIN[0]}</h1>
<div class="tabs"><a href="#">Article</a> <a href="#">Talk</a> <a href="#">Read</a> <a href="#">Edit</a> <a href="#">View history</a></div>
<div id="siteSub">From Freepedia, the free encyclopedia</div>
<div id="bodyContent">
<table class="infobox"><tr><th colspan="2">Kestrel Lake</th></tr><tr><th>Location</th><td>Northern highlands, Varnia</td></tr><tr><th>Type</th><td>Glacial lake</td></tr></table>
<p>{_WIKI_MAIN[1]}<sup><a href="#cite1">[1]</a></sup></p><p>{_WIKI_MAIN[2]}</p>
<div id="toc"><h2>Contents</h2><ul><li>1 Geography</li><li>2 Ecology</li><li>3 History</li><li>4 References</li></ul></div>
<h2>{_WIKI_MAIN[3]}<span class="edit">[edit]</span></h2><p>{_WIKI_MAIN[4]}</p>
<h2>{_WIKI_MAIN[5]}<span class="edit">[edit]</span></h2><p>{_WIKI_MAIN[6]}</p>
<h2>{_WIKI_MAIN[7]}<span class="edit">[edit]</span></h2><p>{_WIKI_MAIN[8]}</p>
<h2>References</h2><ol class="references"><li id="cite1">Varnian Hydrological Survey (2004). Lakes of the northern highlands. Survey report 17, pages 33 to 41.</li></ol>
<div class="catlinks">Categories: Lakes of Varnia | Glacial lakes | Nature reserves of Varnia</div>
</div></div>
<div id="footer"><p>This page was last edited on 3 April 2026, at 09:12.</p><p>Text is available under a free licence; additional terms may apply. By using this site, you agree to the Terms of Use and Privacy Policy.</p><ul><li><a href="/privacy">Privacy policy</a></li><li><a href="/about">About Freepedia</a></li><li><a href="/disclaimers">Disclaimers</a></li><li><a href="/mobile">Mobile view</a></li></ul></div>
</body></html>""",
    _WIKI_MAIN,
)

_BLOG_MAIN = [
    "What I learned from growing tomatoes on a north-facing balcony",
    "When we moved into the flat three years ago I was told that nothing edible would grow on a balcony that sees direct sun for barely two hours a day. I decided to try anyway, and this post collects what worked and what did not.",
    "The single most important decision was the variety. Large beefsteak tomatoes never ripened before the first autumn frost, while small cherry varieties gave a steady harvest from late July onwards.",
    "Containers matter more than I expected. Dark plastic pots heated up and dried out within hours on the few hot days, so I switched to large fabric grow bags, which kept the roots cooler and drained well after heavy rain.",
    "Finally, a cheap reflective panel made from a sheet of white foam board, leaned against the back wall, noticeably increased the light reaching the lower leaves. In the third summer I picked just over six kilograms of tomatoes from four plants.",
]

BLOG = MarkedPage(
    "blog",
    f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_BLOG_MAIN[0]} – Small Space Gardener</title>{_STYLE}{_SCRIPT}</head><body>
<div class="topbar"><a href="/">Small Space Gardener</a> <a href="/archive">Archive</a> <a href="/about">About me</a> <a href="/shop">Shop</a> <a href="/contact">Contact</a> <a href="/rss">RSS</a></div>
<div class="wrap"><div class="post">
<h1 class="entry-title">{_BLOG_MAIN[0]}</h1>
<div class="meta">Posted on 2 September 2025 by Maren · Filed under Vegetables, Balcony · 14 comments</div>
{"".join(f"<p>{p}</p>" for p in _BLOG_MAIN[1:])}
<div class="tags">Tags: tomatoes, balcony, shade, containers</div>
<div class="share">Share this: <a href="#">Pinterest</a> <a href="#">Facebook</a> <a href="#">Email</a></div>
<div class="author-box"><p>Maren writes about growing food in small spaces. She lives in a fourth-floor flat with a cat and far too many pots.</p></div>
</div>
<div id="comments"><h3>14 comments</h3>
<div class="comment"><p class="who">Jonas on 3 September 2025</p><p>Great post! Which cherry variety did you use in the end? Mine always split after rain.</p><a href="#">Reply</a></div>
<div class="comment"><p class="who">Maren on 3 September 2025</p><p>Thanks Jonas, mostly a yellow pear type; it splits far less than the red ones in my experience.</p><a href="#">Reply</a></div>
<div class="comment"><p class="who">Priya on 5 September 2025</p><p>The foam board trick is genius, trying it on my herbs this week.</p><a href="#">Reply</a></div>
<form><textarea placeholder="Leave a comment"></textarea><button>Post comment</button></form></div>
<div class="sidebar"><h3>Popular posts</h3><ul><li><a href="/1">Ten herbs that tolerate shade</a></li><li><a href="/2">How I built a worm bin under the sink</a></li><li><a href="/3">Strawberries in hanging baskets: a review</a></li><li><a href="/4">My favourite watering cans, ranked</a></li></ul>
<h3>Newsletter</h3><p>Get new posts by email, about twice a month. No spam, ever.</p><h3>Categories</h3><ul><li>Vegetables (42)</li><li>Herbs (18)</li><li>Balcony (37)</li><li>Tools (11)</li></ul></div></div>
<footer><p>© 2025 Small Space Gardener. Some links on this site are affiliate links; I may earn a small commission at no cost to you.</p></footer>
</body></html>""",
    _BLOG_MAIN,
)

_DOCS_MAIN = [
    "Configuring retries",
    "Every client created with the library retries failed requests automatically. A request is retried when the connection is refused, when it times out, or when the server answers with status 429 or any status from 500 to 599.",
    "The number of attempts and the waiting time between them are set when the client is created. The default is three attempts, with an exponential back-off that starts at half a second and doubles after every failure, up to at most eight seconds.",
    "A request that was already sent is only retried when it is idempotent. POST requests are therefore never retried after the body has been transmitted, unless the caller marks them as safe to repeat.",
    "Retries can be switched off for a single request by passing a retry policy with one attempt. This is useful for health checks, where a quick and honest failure is more helpful than a delayed success.",
]

DOCS = MarkedPage(
    "documentation",
    f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Configuring retries — nethook 4.2 documentation</title>{_STYLE}
<script>var DOCUMENTATION_OPTIONS = {{ VERSION: '4.2', LANGUAGE: 'en', HAS_SOURCE: true }};</script></head><body>
<div class="announcement">nethook 5.0 is in beta: read the migration guide before upgrading.</div>
<div class="sidebar"><div class="search"><input type="text" placeholder="Search the docs"></div><p class="caption">Contents</p><ul><li><a href="/install">Installation</a></li><li><a href="/quickstart">Quick start</a></li><li><a href="/clients">Clients</a><ul><li><a href="/clients/sessions">Sessions</a></li><li><a href="/clients/retries">Configuring retries</a></li><li><a href="/clients/timeouts">Timeouts</a></li><li><a href="/clients/proxies">Proxies</a></li></ul></li><li><a href="/server">Servers</a></li><li><a href="/api">API reference</a></li><li><a href="/changelog">Changelog</a></li><li><a href="/faq">FAQ</a></li></ul>
<p class="caption">Version</p><select><option>4.2 (stable)</option><option>5.0b1</option><option>3.9</option></select></div>
<div class="document"><div class="breadcrumbs"><a href="/">Docs</a> » <a href="/clients">Clients</a> » Configuring retries <a class="edit" href="#">Edit on GitHub</a></div>
<div class="body" role="main"><section id="configuring-retries"><h1>{_DOCS_MAIN[0]}<a class="headerlink" href="#configuring-retries">¶</a></h1>
{"".join(f"<p>{p}</p>" for p in _DOCS_MAIN[1:])}
</section></div>
<div class="footer-nav"><a href="/clients/sessions">« Previous: Sessions</a> <a href="/clients/timeouts">Next: Timeouts »</a></div>
<footer><p>© Copyright 2019–2026, the nethook developers. Built with a static site generator using a theme provided by a community project.</p><p>Was this page helpful? <a href="#">Yes</a> <a href="#">No</a></p></footer></div>
</body></html>""",
    _DOCS_MAIN,
)

_RECIPE_MAIN = [
    "Weeknight lentil soup with lemon",
    "This soup takes about forty minutes from start to finish and keeps well in the fridge for four days. Red lentils fall apart as they cook, so the soup turns thick and creamy without any cream.",
    "Start by softening one chopped onion, two carrots and two cloves of garlic in three tablespoons of olive oil over medium heat for about eight minutes, stirring now and then.",
    "Add one teaspoon of ground cumin and half a teaspoon of smoked paprika and cook for one more minute, then add two hundred grams of rinsed red lentils and one litre and a quarter of vegetable stock.",
    "Simmer for twenty-five minutes, until the lentils are completely soft. Blend half of the soup and stir it back in, then season with salt and the juice of one lemon just before serving.",
]

RECIPE = MarkedPage(
    "recipe",
    f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_RECIPE_MAIN[0]} | Good Table Recipes</title>{_STYLE}{_SCRIPT}
<script type="application/ld+json">{{"@type":"Recipe","name":"Weeknight lentil soup","recipeYield":"4 servings"}}</script></head><body>
<div id="consent-overlay" class="cookie"><h2>Your privacy matters to us</h2><p>We and our 143 partners store and access information on your device, such as cookies, and process personal data for personalised ads and content, ad and content measurement, audience insights and product development.</p><button>I agree</button><button>More options</button></div>
<header><a class="brand" href="/">Good Table Recipes</a><nav><a href="/dinner">Dinner</a> <a href="/baking">Baking</a> <a href="/vegetarian">Vegetarian</a> <a href="/quick">Quick and easy</a> <a href="/holidays">Holidays</a> <a href="/videos">Videos</a> <a href="/newsletter">Newsletter</a></nav></header>
<div class="jump"><a href="#recipe">Jump to recipe</a> <a href="#">Print recipe</a> <a href="#">Save to favourites</a></div>
<div class="rating">4.8 stars from 1,203 ratings</div>
<div class="entry"><h1>{_RECIPE_MAIN[0]}</h1>
{"".join(f"<p>{p}</p>" for p in _RECIPE_MAIN[1:3])}
<div class="ad-slot">Advertisement. Story continues below.</div>
{"".join(f"<p>{p}</p>" for p in _RECIPE_MAIN[3:])}
</div>
<div class="reviews"><h3>Reviews</h3><p>Anna: made this twice this week, the lemon really lifts it.</p><p>Dev: added spinach at the end, lovely.</p></div>
<div class="more"><h3>You might also like</h3><ul><li><a href="/r1">Chickpea and spinach stew</a></li><li><a href="/r2">Roasted tomato soup</a></li><li><a href="/r3">Ten-minute noodle salad</a></li><li><a href="/r4">One-pot mushroom risotto</a></li></ul></div>
<footer><p>Good Table Recipes is part of Good Table Media. © 2026. All rights reserved.</p><ul><li><a href="/privacy">Privacy</a></li><li><a href="/cookies">Cookie settings</a></li><li><a href="/terms">Terms</a></li><li><a href="/contact">Contact us</a></li></ul></footer>
</body></html>""",
    _RECIPE_MAIN,
)

PAGES = (NEWS, WIKI, BLOG, DOCS, RECIPE)
