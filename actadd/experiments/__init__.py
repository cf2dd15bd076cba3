"""The paper's experiments, built on the method (actadd) and never imported by it.

    data        the experiments' data: labelled texts, prompts, documents, LAMA facts
    generation  topic, sentiment, toxicity: completions sampled unsteered and steered, scored
    likelihood  perplexity by relevance, P@K on facts
    overhead    the time premium of steering
    paper       `actadd paper`: the battery into one report, with its claims table
    claims      what the paper says: versions, their settings, reported tables, the verdict rule
    scorers     texts -> scores (vader, profanity, hf:MODEL, perspective)
    stats       Wilson and t intervals, paired differences over prompts
    results     the resumable results file
    runner      where the units of work run: here, or (dask) on a Dask cluster

    from actadd.experiments import data, generation
    run = generation.sentiment(model, tok, data.read_labelled("imdb.tsv"), "runs/s", layer=6, coeff=5)
"""
