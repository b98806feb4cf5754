"""Per-topic word lists and sentence templates for the workload generator's item texts.

Each :class:`Topic` is one interest cluster's vocabulary: distinctive words and short phrases that a sentence
embedding model (all-MiniLM-L6-v2) maps to clearly separate regions, plus a *shifted* sub-vocabulary used when
the generator plants a content drift (the cluster's new items move to a related but different topic, e.g.
cooking -> air fryer and meal prep). Everything is ASCII so texts are short and byte-stable.

>>> len(TOPICS) >= 24 and all(30 <= len(t.words) <= 40 and len(t.shifted_words) >= 15 for t in TOPICS)
True
>>> import numpy as np
>>> text = item_text(np.random.default_rng(0), TOPICS[0].words)
>>> len(text) < 300 and text[0].isupper()
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_TEXT_CHARS = 300


@dataclass(frozen=True)
class Topic:
    name: str
    keywords: tuple[str, ...]  # a few words that describe the cluster (ground truth, LLM labels)
    words: tuple[str, ...]  # distinctive words and phrases of the topic
    shifted_name: str  # what the topic drifts to under a content drift
    shifted_words: tuple[str, ...]


def _topic(name: str, keywords: str, words: str, shifted_name: str, shifted_words: str) -> Topic:
    def split(s: str) -> tuple[str, ...]:
        return tuple(" ".join(w.split()) for w in s.split(",") if w.strip())  # phrases may wrap lines

    return Topic(name, tuple(keywords.split()), split(words), shifted_name, split(shifted_words))


# Templates take 5-9 phrases ({0}..{n}); the generic framing words are shared by all topics on purpose, so
# the only topical signal in a text is its vocabulary.
TEMPLATES: tuple[str, ...] = (
    "Quick guide: {0}, {1} and {2}. Why {3} matters for {4}.",
    "{0} vs {1}: what we learned about {2}, {3} and {4}",
    "Beginner's notes on {0} and {1}, with {2}, {3}, {4} and {5}",
    "Everything about {0}: {1}, {2} and a bit of {3}. Bonus: {4} and {5}.",
    "How I got into {0} through {1}, {2} and {3}; next up, {4}",
    "Top picks this week: {0}, {1}, {2}, {3} and {4}",
    "Deep dive into {0}. Covers {1}, {2}, {3}, {4}, {5} and {6}.",
    "Is {0} overrated? A look at {1}, {2} and {3} versus {4}",
    "{0}, {1} and {2} explained in ten minutes, plus {3} and {4}",
    "Weekend plan: {0} in the morning, {1} and {2} later, {3} and {4} to finish",
    "Q&A on {0}: {1}, {2}, {3}, {4} and {5} answered",
    "The surprising link between {0} and {1}: {2}, {3}, {4}, {5}, {6} and {7}",
    "Notes from a {0} meetup: {1}, {2}, {3} and {4}",
    "Myths about {0} and {1}, debunked with {2}, {3} and {4}",
    "Field report: {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7} and {8}",
    "Watch this before you try {0}: {1}, {2}, {3}, {4} and {5}",
    "My honest take on {0}. {1}, {2} and {3} are worth it; {4} is not.",
    "A short thread on {0}, {1}, {2}, {3}, {4} and {5}",
)

TOPICS: tuple[Topic, ...] = (
    _topic("cooking", "cooking recipes kitchen",
           """sourdough starter, cast iron skillet, braising, weeknight dinners, knife skills, pan sauce, risotto,
           roast chicken, homemade pasta, stock pot, caramelized onions, garlic butter, sheet pan supper, marinade,
           spice rub, slow cooker stew, stir fry, dutch oven, bechamel, simmering, chopping board, sous chef,
           seasoning, herb crust, pan seared salmon, chef's knife, deglazing, family dinner, comfort food,
           pantry staples, umami""",
           "air fryer and meal prep",
           """air fryer, meal prep containers, batch cooking, high protein bowls, macro tracking, crispy air fried
           wings, sunday meal prep, freezer meals, overnight oats, portion control, five ingredient recipes,
           lunchbox ideas, protein pancakes, chicken and rice, calorie counting, instant pot"""),
    _topic("soccer", "soccer football league",
           """midfielder, penalty kick, offside rule, striker, goalkeeper, premier league, champions league,
           hat trick, corner kick, free kick, tiki taka, counter attack, clean sheet, header, yellow card,
           red card, stoppage time, back four, high pressing, dribbling, left winger, world cup qualifier,
           derby match, football pitch, relegation battle, extra time, set piece, kickoff, injury time winner,
           offside trap, centre back""",
           "transfer window and VAR",
           """transfer window, release clause, VAR review, agent fees, loan deal, signing bonus, medical test,
           deadline day, scouting report, wage bill, contract extension, youth academy prospect, video assistant
           referee, record transfer fee, free agent"""),
    _topic("jazz", "jazz music improvisation",
           """saxophone solo, bebop, walking bass line, trumpet, swing rhythm, improvisation, big band, blue note,
           jazz standards, piano trio, double bass, brushes on snare, cool jazz, miles davis, john coltrane,
           jam session, chord changes, modal jazz, scat singing, jazz club, trombone, syncopation, hard bop,
           ella fitzgerald, upright bass, jazz festival, horn section, torch ballad, two five one progression,
           smoky lounge, duke ellington""",
           "lo-fi beats and jazz rap",
           """lo-fi beats, chillhop playlist, sampled jazz loops, beat tape, boom bap drums, study beats,
           vinyl crackle, synth fusion, rhodes electric piano, drum machine, nu jazz, beat making, sample flip,
           late night study stream, jazz rap"""),
    _topic("astronomy", "astronomy space stars",
           """telescope, nebula, galaxy cluster, black hole, light years, exoplanet, supernova, meteor shower,
           andromeda galaxy, star chart, constellation, dark sky site, planetary nebula, red giant, spiral galaxy,
           orion nebula, lunar eclipse, solar eclipse, jupiter's moons, saturn's rings, astrophotography,
           milky way, comet tail, dwarf planet, neutron star, gravitational waves, cosmic microwave background,
           observatory, redshift, asteroid belt, stargazing""",
           "rocket launches and spaceflight",
           """rocket launch, reusable booster, orbital launch pad, starship test flight, satellite constellation,
           crew capsule, launch window, payload fairing, falcon nine, space station docking, commercial
           spaceflight, moon lander mission, static fire test, splashdown, mission control"""),
    _topic("gardening", "gardening plants garden",
           """tomato seedlings, compost pile, raised bed, mulch, perennials, pruning shears, vegetable patch,
           soil ph, companion planting, heirloom seeds, watering can, garden hose, aphids, rose bush,
           flower border, potting soil, hardy annuals, crop rotation, weeding, manure, greenhouse, garden trowel,
           herb garden, sunflowers, spring bulbs, fruit trees, lawn care, cold frame, earthworms, hedge trimming,
           seed catalogue""",
           "houseplants and hydroponics",
           """monstera, fiddle leaf fig, houseplant care, grow lights, hydroponic system, nutrient solution,
           pothos cuttings, propagation station, humidity tray, windowsill succulents, self watering pots,
           repotting houseplants, snake plant, indoor jungle, led grow tent"""),
    _topic("personal finance", "money budgeting savings",
           """budgeting spreadsheet, emergency fund, index funds, retirement account, compound interest,
           credit score, debt snowball, savings rate, expense tracking, net worth, tax refund, high yield savings,
           dollar cost averaging, 401k match, roth ira, side hustle income, frugal living, student loans,
           financial independence, paycheck, credit card debt, bond ladder, dividend stocks, insurance premiums,
           estate planning, money habits, financial advisor, inflation protection, cash envelopes,
           sinking funds""",
           "crypto and meme stocks",
           """bitcoin halving, crypto wallet, altcoin season, meme stock rally, options trading, blockchain tokens,
           ethereum gas fees, day trading, stablecoin, nft drop, short squeeze, crypto exchange, leverage trading,
           seed phrase, token airdrop"""),
    _topic("strength training", "fitness gym strength",
           """deadlift, squat rack, bench press, progressive overload, protein shake, reps and sets, barbell,
           kettlebell swings, pull ups, muscle growth, gym routine, personal record, leg day, dumbbell rows,
           push pull legs, bodybuilding, creatine, warm up sets, powerlifting meet, rest days, hypertrophy,
           spotter, lifting chalk, overhead press, hiit workout, foam roller, gym membership, lifting belt,
           compound lifts, one rep max""",
           "pilates and mobility",
           """reformer pilates, mobility drills, hip flexor stretch, core stability, yoga flow, resistance bands,
           posture correction, low impact workout, wall pilates, breathwork, flexibility routine,
           balance training, mat pilates, recovery stretching, joint mobility"""),
    _topic("photography", "photography camera photos",
           """aperture, shutter speed, iso settings, prime lens, depth of field, golden hour, tripod,
           mirrorless camera, raw files, exposure triangle, bokeh, lightroom edits, street photography,
           portrait lighting, wide angle lens, rule of thirds, long exposure, film camera, darkroom,
           focal length, landscape photography, speedlight flash, white balance, histogram, telephoto lens,
           photo walk, camera bag, viewfinder, full frame sensor, light meter""",
           "smartphone photos and AI editing",
           """smartphone camera, computational photography, ai photo editing, portrait mode, night mode,
           phone gimbal, generative fill, filters and presets, vertical video, selfie ring light,
           one tap editing, ai upscaling, background removal, instagram reels, clip on phone lens"""),
    _topic("travel", "travel trips destinations",
           """backpacking, passport, boarding pass, hostel, itinerary, carry on luggage, travel insurance,
           layover, hidden gems, city break, road trip, jet lag, local street food, sightseeing, travel hacks,
           airline miles, train journey, guided tour, beach resort, visa application, old town, souvenir shop,
           off the beaten path, hotel booking, currency exchange, tourist trap, weekend getaway, travel guide,
           island hopping, budget flights""",
           "digital nomads and van life",
           """digital nomad visa, van life, coworking space, remote work from bali, camper van conversion,
           slow travel, long stay rentals, nomad community, solar panels on the van, wifi hotspot,
           laptop lifestyle, work and travel, overlanding, monthly rentals, nomad budget"""),
    _topic("video games", "gaming games consoles",
           """open world, boss fight, speedrun, game console, save file, multiplayer lobby, rpg quest, loot drop,
           patch notes, controller, frame rate, indie game, battle royale, level design, skill tree, side quest,
           game trailer, esports tournament, respawn, achievement unlocked, dlc expansion, character build,
           co-op mode, game engine, early access, ranked match, final boss, gaming pc, save point, roguelike""",
           "retro handhelds and emulation",
           """retro handheld, emulation, game boy, cartridge collection, crt monitor, 8-bit classics,
           arcade cabinet, rom hacks, pixel perfect scaling, retro console, nes controller, chiptune,
           sega genesis, portable emulator, pixel art sprites"""),
    _topic("programming", "programming software code",
           """python, unit tests, git commit, pull request, refactoring, code review, compiler, api design,
           database index, docker container, linux terminal, memory leak, stack trace, type hints, async await,
           continuous integration, rust borrow checker, debugger, open source, dependency hell, microservices,
           kubernetes cluster, regular expressions, algorithms, data structures, technical debt,
           javascript framework, sql query, load balancer, version control""",
           "AI coding assistants",
           """ai coding assistant, llm agents, prompt engineering, code completion, copilot suggestions,
           vibe coding, model context window, agentic workflows, ai pair programmer, generated tests,
           token limits, autocomplete, code generation, llm hallucination, rag pipeline"""),
    _topic("pets", "pets dogs cats",
           """puppy training, dog leash, cat litter, kibble, vet visit, dog park, fetch, chew toys, cat tree,
           grooming brush, flea treatment, rescue dog, adoption shelter, house training, purring,
           scratching post, leash walking, golden retriever, kitten, border collie, tabby cat, pet insurance,
           dog treats, crate training, dog bed, obedience class, whiskers, tail wagging, pet sitter, senior dog""",
           "reptiles and exotic pets",
           """bearded dragon, leopard gecko, terrarium, heat lamp, ball python, vivarium, live crickets, tortoise,
           axolotl, uvb lighting, shedding skin, exotic vet, hermit crab, reptile enclosure, substrate"""),
    _topic("fashion", "fashion style clothing",
           """streetwear, sneaker drop, runway show, capsule wardrobe, denim jacket, tailoring, silk scarf,
           haute couture, fashion week, leather boots, trench coat, oversized blazer, color palette, knitwear,
           statement accessories, designer handbag, designer label, outfit of the day, linen shirt,
           tailored trousers, wardrobe staples, fit check, high heels, fashion editorial, lookbook,
           pleated skirt, statement earrings, cashmere sweater, style icon, catwalk""",
           "thrifting and sustainable fashion",
           """thrift haul, secondhand clothing, upcycling, sustainable fashion, clothing swap, mending,
           visible repair, slow fashion, charity shop finds, resale apps, organic cotton, depop, vintage market,
           fast fashion waste, vintage denim"""),
    _topic("cars", "cars automotive driving",
           """horsepower, turbocharger, manual transmission, oil change, torque, sports car, v8 engine, test drive,
           suspension, brake pads, all wheel drive, dashboard, fuel economy, car review, track day, exhaust note,
           tire pressure, muscle car, convertible, gearbox, car detailing, engine bay, drift car, pickup truck,
           hatchback, rally stage, used car, dealership, mechanic, spark plugs""",
           "electric vehicles",
           """electric vehicle, battery range, fast charging, charging station, regenerative braking,
           home charger, kwh per mile, range anxiety, ev tax credit, battery degradation, one pedal driving,
           tesla supercharger, heat pump, over the air update, charging curve"""),
    _topic("home improvement", "diy renovation home",
           """power drill, drywall, paint roller, tile grout, kitchen renovation, bathroom remodel,
           hardwood floors, circular saw, stud finder, caulking, wallpaper, plumbing leak, deck staining,
           crown molding, sanding, spirit level, toolbox, floating shelves, fixer upper, load bearing wall,
           insulation, cabinet doors, backsplash, before and after, sawdust, hardware store run,
           weekend project, baseboards, screwdriver, measuring tape""",
           "smart home gadgets",
           """smart thermostat, smart speaker, home assistant, video doorbell, smart bulbs, motion sensors,
           home automation, zigbee hub, smart plugs, voice control, security camera, robot vacuum, smart lock,
           automation routines, matter protocol"""),
    _topic("movies", "movies film cinema",
           """box office, director's cut, film festival, screenplay, cinematography, oscar nominations,
           blockbuster, film noir, opening weekend, movie trailer, plot twist, film score, casting, sequel,
           movie theater, popcorn, indie film, special effects, film critic, red carpet, screenwriter,
           stunt double, documentary, horror movie, romantic comedy, western, cult classic, 35mm film,
           anime film, heist movie""",
           "streaming series",
           """streaming series, binge watching, season finale, episode recap, cliffhanger, showrunner,
           streaming service, limited series, renewed for season two, spoilers, watch party, subscription price,
           prestige drama, pilot episode, fan theories"""),
    _topic("basketball", "basketball nba hoops",
           """slam dunk, three pointer, point guard, nba playoffs, rebound, free throw, jump shot,
           crossover dribble, fast break, pick and roll, alley oop, buzzer beater, triple double, shot clock,
           full court press, sixth man, draft lottery, power forward, small forward, fadeaway, layup,
           blocked shot, box score, finals mvp, half court, court vision, backboard, basketball sneakers,
           march madness, tip off""",
           "fantasy basketball",
           """fantasy league, waiver wire, player props, daily fantasy, trade deadline deals, projections,
           sleeper picks, injury report, roster moves, stat lines, head to head matchup, points league,
           draft rankings, streaming players, fantasy playoffs"""),
    _topic("hiking", "hiking trails outdoors",
           """trailhead, hiking boots, switchbacks, summit, backpack, trekking poles, elevation gain, trail map,
           national park, campsite, water filter, blisters, alpine lake, ridge line, waterfall hike, day hike,
           thru hike, tent, sleeping bag, headlamp, wildflowers, leave no trace, mountain pass, scrambling,
           rain jacket, trail mix, topographic map, bear canister, hut to hut, forest trail""",
           "trail running and ultramarathons",
           """trail running, ultramarathon, race vest, vertical kilometer, aid station, lugged running shoes,
           50k race, fastest known time, carbon plate, electrolytes, pace per mile, night running, sky running,
           race bib, downhill technique"""),
    _topic("skincare", "skincare beauty skin",
           """moisturizer, sunscreen spf, retinol, hyaluronic acid, cleanser, vitamin c serum, acne,
           skincare routine, exfoliation, face mask, dermatologist, dry skin, oily skin, toner, eye cream,
           niacinamide, pores, sensitive skin, night cream, spf reapplication, dark spots, fine lines, lip balm,
           ceramides, skin barrier, clay mask, chemical peel, double cleansing, glowing skin, fragrance free""",
           "k-beauty",
           """k-beauty, ten step routine, sheet mask, essence, snail mucin, glass skin, cushion compact, centella,
           korean sunscreen, ampoule, rice water toner, jelly cream, hanbang, bb cream, seoul skincare haul"""),
    _topic("parenting", "parenting kids family",
           """toddler tantrums, bedtime routine, baby sleep, breastfeeding, diaper bag, potty training,
           school lunch, playdate, parenting tips, newborn, stroller, car seat, homework help, picky eaters,
           sibling rivalry, baby food, teething, nursery, daycare, family routine, parent teacher meeting,
           kids activities, storytime, nap schedule, growth spurt, pediatrician, parental leave, baby monitor,
           preschool, first words""",
           "raising teenagers",
           """teenager, first smartphone, social media age limits, teen mental health, driving lessons,
           college applications, curfew, group chat, online safety, gaming time limits, sat prep,
           part time job, teen dating, screen time apps, exam stress"""),
    _topic("chess", "chess strategy openings",
           """opening repertoire, sicilian defense, queen's gambit, endgame, checkmate, grandmaster, chess clock,
           pawn structure, knight fork, castling, en passant, rook endgame, bishop pair, tactics puzzle, blunder,
           elo rating, chess tournament, zugzwang, king safety, middlegame, chessboard, stalemate,
           pin and skewer, fianchetto, ruy lopez, gambit, chess engine, draw offer, simultaneous exhibition,
           opening trap""",
           "online blitz chess",
           """bullet chess, blitz arena, chess streamer, online rating, premoves, titled tuesday, puzzle rush,
           twitch chess stream, bughouse, berserk, rapid chess, speedrun to 2000, chess memes, flagging,
           time scramble"""),
    _topic("coffee", "coffee espresso brewing",
           """espresso shot, pour over, latte art, coffee beans, burr grinder, french press, cold brew,
           roast profile, crema, arabica, single origin, aeropress, barista, milk frother, coffee shop,
           cappuccino, flat white, light roast, dark roast, chemex, tamping, extraction time, moka pot,
           drip coffee, decaf, coffee subscription, caffeine, americano, bean storage, portafilter""",
           "matcha and tea",
           """matcha latte, ceremonial grade matcha, bamboo whisk, oolong, loose leaf tea, gongfu brewing,
           green tea, chai spice, tea ceremony, yerba mate, hojicha, tea kettle, bubble tea, earl grey,
           herbal infusion"""),
    _topic("ancient history", "history ancient civilizations",
           """roman empire, ancient egypt, pharaoh, pyramids, archaeology, gladiators, greek philosophers,
           spartans, julius caesar, mesopotamia, cuneiform tablets, alexander the great, colosseum, hieroglyphs,
           persian empire, bronze age, ancient rome, athenian democracy, roman legion, ancient ruins, carthage,
           trojan war, papyrus, excavation site, sphinx, byzantium, celtic tribes, ancient temples,
           dead sea scrolls, roman senate""",
           "world war two history",
           """world war two, d-day landings, battle of britain, eastern front, resistance fighters,
           codebreakers, enigma machine, pacific theater, tank battles, wartime propaganda, the blitz,
           home front, war diaries, normandy beaches, victory in europe"""),
    _topic("knitting", "knitting yarn crafts",
           """knitting needles, yarn stash, wool, cable knit, sweater pattern, purl stitch, cast on,
           knitting circle, chunky blanket, merino yarn, stitch markers, socks pattern, lace knitting,
           colorwork, blocking, ravelry, hand dyed yarn, beanie, scarf, knit along, gauge swatch, skein,
           circular needles, ribbing, fair isle, sock yarn, mittens, bind off, row counter, cardigan""",
           "crochet and amigurumi",
           """crochet hook, amigurumi, granny square, magic ring, single crochet, plush toy pattern, crochet bag,
           safety eyes, toy stuffing, tunisian crochet, crochet top, double crochet, chain stitch,
           crochet flowers, cute crochet animals"""),
    _topic("birdwatching", "birds birding wildlife",
           """bird feeder, songbirds, warbler, migration season, field guide, bird call, hawk, nesting season,
           bird sanctuary, robin, woodpecker, owl, heron, hummingbird, bird count, spotting scope, wetlands,
           finches, bald eagle, bird photography, life list, dawn chorus, plumage, raptors, sparrow,
           birding trip, shorebirds, bluebird, rare sighting, binoculars""",
           "bird apps and backyard feeders",
           """bird id app, sound identification, ebird checklist, smart bird feeder, feeder camera,
           bird song recordings, suet cakes, squirrel proof feeder, birdbath, nest box camera, merlin app,
           backyard bird count, window collisions, native plants for birds, mealworms"""),
    _topic("cycling", "cycling bikes riding",
           """road bike, cycling jersey, peloton, gravel ride, bike lane, derailleur, chain lube, hill climbing,
           tour de france, cadence, power meter, clipless pedals, bike fit, century ride, time trial,
           carbon frame, group ride, crit race, saddle, helmet, handlebar tape, wheelset, bike commute,
           puncture repair, bike shop, headwind, cycling shorts, gear ratio, hill repeats, mountain bike""",
           "e-bikes",
           """e-bike, electric bike battery, pedal assist, cargo bike, hub motor, e-bike commute, throttle,
           e-scooter, torque sensor, bike share, range per charge, folding e-bike, motor wattage, e-bike laws,
           charging at work"""),
    _topic("real estate", "housing property homes",
           """mortgage rates, open house, first time buyer, down payment, real estate agent, listing price,
           home inspection, closing costs, property value, housing market, bidding war, condo, starter home,
           escrow, appraisal, square footage, curb appeal, property tax, investment property, flipping houses,
           suburbs, zoning, landlord, realtor, buyer's market, hoa fees, floor plan, new construction,
           foreclosure, home equity""",
           "renting and the rent crisis",
           """rent increase, tenant rights, rent control, eviction notice, housing affordability, roommates,
           studio apartment, lease renewal, rent burden, co-living, security deposit, apartment hunting,
           rental listings, housing shortage, renters union"""),
    _topic("wine", "wine vineyards tasting",
           """cabernet sauvignon, pinot noir, wine tasting, vineyard, sommelier, tannins, decanter, vintage year,
           wine cellar, chardonnay, terroir, rose wine, merlot, sparkling wine, champagne, wine pairing,
           oak barrel, grape harvest, bordeaux, napa valley, riesling, dry white, full bodied red, corkscrew,
           wine bar, natural wine, winery tour, malbec, aroma notes, tasting notes""",
           "craft beer",
           """craft beer, ipa, hazy ipa, stout, brewery taproom, hops, homebrewing, sour beer, pale ale, lager,
           beer flight, barrel aged, pint glass, microbrewery, beer festival"""),
)


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def item_text(rng: np.random.Generator, words: Sequence[str]) -> str:
    """A natural-looking one- or two-sentence item text from 5-9 distinct phrases of ``words``.

    Templates that would exceed :data:`MAX_TEXT_CHARS` are retried with the shortest one, so the result is
    always short. The number of draws from ``rng`` is fixed (determinism does not depend on text lengths).
    """
    t = int(rng.integers(len(TEMPLATES)))
    order = rng.permutation(len(words))
    template = TEMPLATES[t]
    n = template.count("{")
    text = _capitalize(template.format(*(words[i] for i in order[:n])))
    if len(text) >= MAX_TEXT_CHARS:  # only with unusually long phrases; the shortest template always fits
        short = min(TEMPLATES, key=lambda s: (s.count("{"), len(s)))
        text = _capitalize(short.format(*(words[i] for i in order[: short.count("{")])))
    return text


def item_tags(rng: np.random.Generator, topic: Topic, shifted: bool) -> list[str]:
    """1-3 tags: one topic keyword plus up to two phrases of the vocabulary the item was written from."""
    words = topic.shifted_words if shifted else topic.words
    n_extra = int(rng.integers(0, 3))
    kw = topic.keywords[int(rng.integers(len(topic.keywords)))]
    extra = [words[i] for i in rng.choice(len(words), size=n_extra, replace=False)]
    return [kw, *extra]
